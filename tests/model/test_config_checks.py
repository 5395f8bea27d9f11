"""Every user mistake in a config file or a --set override is a one-line ConfigError at load time.

Before these checks, many bad values passed load_config and failed later with a traceback
(often after minutes of feature extraction), or were silently accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hashbridge.cli import main
from model.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]

VALID = (
    "bits = 16\n"
    "seed = 0\n"
    '[data]\npath = "m.csv"\n'
    "[image]\nsize = 64\nhidden = [64]\n"
    "[text]\nhidden = [64]\n"
    "[train]\nepochs = 2\nbatch_size = 8\nlr = 0.01\neval_every = 1\n"
)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(VALID, encoding="utf-8")
    return path


def refused(path: Path | None, overrides: list[str] | None = None) -> str:
    """The ConfigError message load_config raises; it must be one line."""
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


SYNTHETIC = 'data.kind="synthetic_video"'

BAD_OVERRIDES = [
    # bits: what the index and the service accept (index.codes.check_bits)
    (["bits=136"], "bits must be a multiple of 8 between 8 and 128"),
    (["bits=256"], "got 256"),
    # optimisation
    (["train.lr=0"], "train.lr must be above 0, got 0.0"),
    (["train.lr=-0.001"], "train.lr must be above 0"),
    (["train.lr=nan"], "train.lr must be a finite number, got nan"),
    (["train.lr=inf"], "train.lr must be a finite number, got inf"),
    (["train.lr=" + "9" * 400], "'train.lr' is too large"),
    (["train.weight_decay=-1e-5"], "train.weight_decay must be at least 0"),
    (["train.weight_decay=inf"], "train.weight_decay must be a finite number"),
    (["train.batch_size=0"], "train.batch_size must be at least 1, got 0"),
    (["train.epochs=0"], "train.epochs must be at least 1, got 0"),
    (["train.epochs=" + "9" * 5000], "'train.epochs' must be an integer"),
    (["train.eval_every=-1"], "train.eval_every must be at least 0"),
    (["train.threads=-1"], "train.threads must be between 0"),
    (["train.threads=4294967296"], "train.threads must be between 0 (torch's default) and 1024"),
    (['train.device="gpu"'], "train.device must be cpu, cuda or cuda:N, got 'gpu'"),
    (['train.device="cuda:x"'], "train.device must be cpu, cuda or cuda:N"),
    # streams
    (["image.size=0"], "image.size must be between 32 and 1024, got 0"),
    (["image.size=-64"], "image.size must be between 32 and 1024"),
    (["image.hidden=[0]"], "image.hidden[0] must be at least 1, got 0"),
    (["text.hidden=[64, -1]"], "text.hidden[1] must be at least 1, got -1"),
    (["video.hidden=[0]"], "video.hidden[0] must be at least 1"),
    (["features.hidden=[-8]"], "features.hidden[0] must be at least 1"),
    (["image.dropout=1.0"], "image.dropout must be at least 0 and below 1, got 1.0"),
    (["text.dropout=-0.1"], "text.dropout must be at least 0 and below 1"),
    (["video.dropout=nan"], "video.dropout must be a finite number"),
    (["features.dropout=2"], "features.dropout must be at least 0 and below 1, got 2.0"),
    (['image.backbone="resnet50"'], "image.backbone must be one of efficientnet-lite0"),
    (['video.backbone="efficientnet-b0"'], "video.backbone must be one of efficientnet-lite0"),
    (['text.tokenizer="chars"'], "text.tokenizer must be one of word, char, got 'chars'"),
    (["text.ngram=0"], "text.ngram must be at least 1"),
    (["text.min_count=0"], "text.min_count must be at least 1"),
    (["text.max_vocab=0"], "text.max_vocab must be at least 1"),
    # method and losses
    (['method="dsmh"'], "method must be one of dsmhn, djsrh, ddcmh, dvsh, got 'dsmh'"),
    (
        ['dsmhn.similarity="cosine"'],
        "dsmhn.similarity must be one of pairwise_nll, contrastive, triplet, tie_aware_ap",
    ),
    (
        ["dsmhn.similarity_params={margin=0.3}"],
        "unknown key 'dsmhn.similarity_params.margin' for dsmhn.similarity = 'pairwise_nll'; "
        "accepted: alpha, balance",
    ),
    (
        ['dsmhn.similarity="tie_aware_ap"', "dsmhn.similarity_params={alpha=1}"],
        "accepted: none",
    ),
    (['dsmhn.similarity_params={alpha="big"}'], "'dsmhn.similarity_params.alpha' must be a number"),
    (["dsmhn.similarity_params={balance=1}"], "'dsmhn.similarity_params.balance' must be true"),
    (["dsmhn.similarity_params={alpha=0}"], "alpha must be positive"),
    (["dsmhn.similarity_params={alpha=nan}"], "dsmhn.similarity_params.alpha must be a finite"),
    (["dsmhn.w_quantization=-0.1"], "dsmhn.w_quantization must be at least 0"),
    (["dsmhn.w_similarity=inf"], "dsmhn.w_similarity must be a finite number"),
    (["dsmhn.tanh_scale_growth=-1"], "dsmhn.tanh_scale_growth must be at least 0"),
    (["dsmhn.w_foo=1"], "unknown config key 'dsmhn.w_foo'; known: binary_bank, shared_label_head"),
    (["dsmhn=5"], "'dsmhn' must be a table"),
    (["dsmhn.shared_label_head=1"], "'dsmhn.shared_label_head' must be true or false, got 1"),
    (["loss.w_intra=0.5", "dsmhn.w_intra=0.5"], "the config has both [loss] and [dsmhn]"),
    # data
    (['data.kind="coco"'], "data.kind must be one of manifest, mirflickr, wikipedia"),
    (["data.modalities=[]"], "data.modalities is empty; list some of image, text, video"),
    (['data.modalities=["image", "audio"]'], "data.modalities[1] must be one of image, text"),
    (['data.modalities=["text", "text"]'], "data.modalities lists a modality twice"),
    (["data.n_query=0"], "data.n_query must be at least 1"),
    (["data.n_train=-5"], "data.n_train must be at least 1"),
    (["data.generate={n=60}"], "data.generate is only read with data.kind = 'synthetic_video'"),
    ([SYNTHETIC, 'data.generate={n="1200"}'], "'data.generate.n' must be an integer, got '1200'"),
    ([SYNTHETIC, "data.generate={size=112.5}"], "'data.generate.size' must be an integer"),
    ([SYNTHETIC, "data.generate={query_fraction=true}"], "'data.generate.query_fraction'"),
    ([SYNTHETIC, 'data.generate={colour="red"}'], "unknown key 'data.generate.colour'"),
    ([SYNTHETIC, "data.generate={out_dir=1}"], "accepted: n, seed, size, frames_per_clip"),
    ([SYNTHETIC, "data.generate={seed=-1}"], "data.generate.seed must be between 0 and"),
    # seeds: NumPy takes 0 .. 2**32 - 1
    (["seed=-1"], "seed must be between 0 and 4294967295, got -1"),
    (["seed=4294967296"], "seed must be between 0 and 4294967295"),
    (["split_seed=-3"], "split_seed must be between 0 and 4294967295"),
    # evaluation
    (["eval.top_r=0"], "eval.top_r must be at least 1"),
    (["eval.ks=[]"], "eval.ks is empty"),
    (["eval.ks=[0, 10]"], "eval.ks[0] must be at least 1, got 0"),
    (
        ["evaluation.top_r=1"],
        "unknown config key 'evaluation'; known: bits, data, ddcmh, djsrh, dsmhn, dvsh, eval",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "fragment"), BAD_OVERRIDES, ids=[" ".join(o)[:40] for o, _ in BAD_OVERRIDES]
)
def test_bad_values_are_config_errors(
    config_file: Path, overrides: list[str], fragment: str
) -> None:
    assert fragment in refused(config_file, overrides)


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    message = refused(tmp_path)
    assert str(tmp_path) in message and "is a directory" in message


def test_a_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(VALID.encode() + "# café\n".encode("latin-1"))
    message = refused(path)
    assert "latin1.toml" in message and "is not UTF-8 text" in message and "0xe9" in message


def test_a_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.encode())
    config = load_config(path)
    assert config.bits == 16 and config.train.epochs == 2


def test_an_integer_too_long_for_python_is_invalid_toml(tmp_path: Path) -> None:
    path = tmp_path / "long.toml"
    path.write_text(f"seed = {'9' * 5000}\n", encoding="utf-8")
    message = refused(path)
    assert "long.toml" in message and "not valid TOML" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("data = 5\n", "'data' must be a table"),
        ("data = [1]\n", "'data' must be a table"),
        ('data = "m.csv"\n', "'data' must be a table"),
        ("[data]\npath = 5\n", "'data.path' must be a string, got 5"),
        ('[data]\npath = ["a.csv"]\n', "'data.path' must be a string"),
    ],
)
def test_wrongly_shaped_data_section(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "shape.toml"
    path.write_text(text, encoding="utf-8")
    assert fragment in refused(path)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--config", "{tmp}"], "is a directory"),
        (["--config", "{tmp}/run.toml", "--set", "train.epochs=0"], "train.epochs"),
        (["--config", "{tmp}/run.toml", "--device", "gpu"], "train.device must be cpu, cuda"),
    ],
)
def test_cli_reports_config_mistakes_in_one_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    config_file: Path,
    args: list[str],
    fragment: str,
) -> None:
    argv = ["train", *(a.format(tmp=tmp_path) for a in args), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("hashbridge train: error:")]
    assert len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "out").exists()


# The two tests below guard against over-strict checks: they pass with or without them.


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_the_repository_configs_load(path: Path) -> None:
    config = load_config(path)
    assert config.bits % 8 == 0 and config.train.epochs >= 1


def test_edge_values_that_are_allowed(config_file: Path) -> None:
    config = load_config(
        config_file,
        [
            "bits=128",
            "seed=4294967295",
            "split_seed=0",
            'train.device="cuda:1"',
            "train.threads=0",
            "train.eval_every=0",
            "train.weight_decay=0",
            "image.dropout=0.0",
            "text.hidden=[]",
            "video.blocks=0",
            'dsmhn.similarity="contrastive"',
            "dsmhn.similarity_params={margin=1}",
            SYNTHETIC,
            "data.generate={n=60, seed=4294967295, query_fraction=0.2}",
        ],
    )
    assert config.bits == 128 and config.train.device == "cuda:1"
    assert config.options.similarity_params == {"margin": 1.0}
    assert config.data.generate == {"n": 60, "seed": 4294967295, "query_fraction": 0.2}


def test_the_old_loss_section_is_read_as_dsmhn_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.toml"
    path.write_text(VALID + "[loss]\nw_intra = 0.5\nsimilarity_params = { balance = true }\n")
    with caplog.at_level("WARNING", logger="model.config"):
        config = load_config(path, ["loss.w_semantic=0"])
    assert config.options.w_intra == 0.5 and config.options.w_semantic == 0.0
    assert config.options.similarity_params == {"balance": True}
    assert "[loss] is the old name of [dsmhn]" in caplog.text
    assert "loss.KEY is now dsmhn.KEY" in caplog.text
    # What a run stores is the new name only.
    saved = config.to_dict()
    assert "loss" not in saved and saved["dsmhn"]["w_intra"] == 0.5
    both = tmp_path / "both.toml"
    both.write_text(VALID + "[loss]\nw_intra = 0.5\n[dsmhn]\nw_semantic = 0.0\n")
    message = refused(both)
    assert "move its keys into [dsmhn]" in message
