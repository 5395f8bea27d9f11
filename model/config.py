"""Run configuration: one dataclass per concern, loaded from TOML and `--set key=value` overrides.

`bits` and `split_seed` are top-level keys so that `--set bits=64 --set split_seed=7` works.
Every value is checked when the config is built (types in `model.checks.build`, ranges and
choices in `_check` and each method section's `rules`), so a mistake is a one-line ConfigError
before any data is read.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundle.text import TOKENIZER_MODES
from bundle.widths import MAX_BITS, MIN_BITS  # code widths: what the index and service take
from model.checks import (
    ConfigError,
    Rule,
    Section,
    at_least,
    between,
    build,
    check_arguments,
    check_rules,
    one_of,
    show,
)
from model.methods.registry import METHODS

__all__ = ["ConfigError", "RunConfig", "apply_overrides", "config_from_dict", "load_config"]

log = logging.getLogger(__name__)

TEXT_ENCODERS = ("bag_of_words", "minilm", "recurrent")
#: Cells of the recurrent sentence stream (text.encoder = "recurrent").
RECURRENT_CELLS = ("gru", "lstm")
#: How the recurrent stream turns its states into one vector: mean over the words, or the last.
RECURRENT_POOLING = ("mean", "last")
DATA_KINDS = ("manifest", "mirflickr", "wikipedia", "flickr8k", "kinetics", "synthetic_video")
MODALITIES = ("image", "text", "video")
# Seeds go to numpy, which takes 0..2**32-1 (train.seed_everything reduces modulo 2**32, so a
# larger seed would quietly repeat a smaller one's NumPy draws).
MAX_SEED = 2**32 - 1


@dataclass
class DataConfig:
    """Which dataset and how it is split."""

    # manifest | mirflickr | wikipedia | flickr8k | kinetics | synthetic_video
    kind: str = "manifest"
    path: str = ""  # manifest file, or the dataset folder
    n_query: int = 2000
    n_train: int = 10000
    modalities: list[str] = field(default_factory=lambda: ["image", "text"])
    generate: dict[str, Any] = field(default_factory=dict)  # synthetic_video generator arguments


@dataclass
class ImageConfig:
    """Image stream: pretrained 2-D CNN, frozen with cached features."""

    backbone: str = "efficientnet-lite0"
    size: int = 128
    flip_features: bool = False  # average features of the image and its mirror
    finetune_blocks: int = 0  # >0: train the backbone's last N blocks (their inputs are cached)
    cache_dir: str = ".cache/features"
    hidden: list[int] = field(default_factory=lambda: [1024])
    dropout: float = 0.2


@dataclass
class TextConfig:
    """Text stream: bag of words or character n-grams, a frozen sentence encoder, or a
    recurrent network over word ids trained from scratch; then an MLP."""

    # bag_of_words | minilm (pretrained English, for captions) | recurrent (word ids, in order)
    encoder: str = "bag_of_words"
    tokenizer: str = "word"  # word | char (bag_of_words and recurrent)
    ngram: int = 2
    min_count: int = 1
    max_vocab: int = 20000
    # minilm: tokens per text, special tokens included; recurrent: words (longer is cut)
    max_length: int = 64
    cell: str = "gru"  # recurrent: gru | lstm
    embedding_dim: int = 256  # recurrent: word embeddings, trained from scratch
    rnn_hidden: int = 512  # recurrent: the cell's state width
    pooling: str = "mean"  # recurrent: mean of the states over the words | last state
    cache_dir: str = ".cache/features"  # minilm: cached sentence embeddings
    hidden: list[int] = field(default_factory=lambda: [1024])
    dropout: float = 0.2


@dataclass
class VideoConfig:
    """Video stream: frozen 2-D trunk per frame (maps cached), then a temporal model."""

    backbone: str = "efficientnet-lite0"
    size: int = 112  # frame size (shorter side resized, centre crop)
    frames: int = 8  # frames sampled uniformly over each clip
    clips: int = 1  # clips per video, their features averaged
    temporal: str = "conv3d"  # conv3d | mean (the frame-averaging 2-D baseline)
    width: int = 128  # channels of the conv3d blocks
    blocks: int = 2  # residual (2+1)-D blocks
    time_bins: int = 2  # ordered time bins kept by the final pooling
    hidden: list[int] = field(default_factory=lambda: [512])
    dropout: float = 0.2
    cache_dir: str = ".cache/video-features"
    workers: int = 2  # decoding processes while extracting maps


@dataclass
class FeatureConfig:
    """Streams over precomputed feature vectors (datasets that ship features)."""

    hidden: list[int] = field(default_factory=lambda: [1024])
    dropout: float = 0.2
    signed_sqrt: bool = False  # Hellinger map for histogram features


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-5
    eval_every: int = 10
    device: str = "cpu"
    threads: int = 0  # 0: torch's default


@dataclass
class EvalConfig:
    """Retrieval metrics settings."""

    top_r: int = 5000
    ks: list[int] = field(default_factory=lambda: [1, 10, 50, 100, 500, 1000])


@dataclass
class RunConfig:
    """Everything a training run needs; stored in every checkpoint."""

    method: str = "dsmhn"
    bits: int = 32
    split_seed: int = 0
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    #: The method's own section (model/methods/options.py), `[dsmhn]` for DSMHN: stored and
    #: written under the method's name; sections of other methods are checked, not kept.
    options: Any = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.method in METHODS:
            self.options = METHODS[self.method].options()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data[self.method] = data.pop("options") or {}
        return data


def _parse_value(text: str) -> Any:
    """Read an override value as a TOML literal, falling back to a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except ValueError:  # TOMLDecodeError, or an integer of more than 4300 digits
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {show(item)} must look like key=value (e.g. bits=64)")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {show(item)}: '{part}' is not a table")
        node[parts[-1]] = _parse_value(value.strip())
    return data


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Validate and build a RunConfig (a checkpoint's saved config too)."""
    data = _renamed_sections(data)
    known = [f.name for f in dataclasses.fields(RunConfig) if f.init]
    for key in data:
        if key not in known and key not in METHODS:
            raise ConfigError(
                f"unknown config key '{key}'; known: {', '.join(sorted([*known, *METHODS]))}"
            )
    config = build(RunConfig, {k: v for k, v in data.items() if k not in METHODS}, "")
    _check(config)
    # Every method's section given is checked (a typo in [dsmhn] is one under --set
    # method=... too); only the trained method's is kept.
    for name in METHODS:
        if name in data or name == config.method:
            section = _section(name, data.get(name, {}))
            if name == config.method:
                config.options = section
    if config.options is not None:
        config.options.check_run(config)
    return config


def _section(name: str, data: Any) -> Section:
    """Build and check the config section of the method registered as `name`."""
    if not isinstance(data, dict):
        raise ConfigError(f"'{name}' must be a table")
    section: Section = build(METHODS[name].options, data, f"{name}.")
    _check_finite(section, name)
    check_rules(section, section.rules(), f"{name}.")
    section.check(f"{name}.")
    return section


#: Sections renamed since: old name -> new (old configs and checkpoints still hold them).
_RENAMED_SECTIONS = {"loss": "dsmhn"}


def _renamed_sections(data: dict[str, Any]) -> dict[str, Any]:
    """Read a section under its old name (with a warning), unless it is given by both."""
    for old, new in _RENAMED_SECTIONS.items():
        if old not in data:
            continue
        if new in data:
            raise ConfigError(
                f"the config has both [{old}] and [{new}]; [{old}] is the old name of [{new}]: "
                f"move its keys into [{new}] ({old}.KEY is now {new}.KEY)"
            )
        log.warning(
            "config section [%s] is the old name of [%s]: read as [%s]; rename it "
            "(%s.KEY is now %s.KEY)",
            old,
            new,
            new,
            old,
            new,
        )
        data = {(new if key == old else key): value for key, value in data.items()}
    return data


def _rules() -> dict[str, Rule]:
    """Every range- or choice-checked key; a list value is checked item by item."""
    # The backbone registry lives with its code. Imported here rather than at the top: it
    # pulls in torch, which a config that is only read does not need.
    from model.backbones.efficientnet import VARIANTS

    at_least_0 = at_least(0)
    rules = {
        "method": one_of(METHODS),
        "bits": Rule(
            lambda v: v % 8 == 0 and MIN_BITS <= v <= MAX_BITS,
            f"a multiple of 8 between {MIN_BITS} and {MAX_BITS} (what the index and service take)",
        ),
        "seed": between(0, MAX_SEED),
        "split_seed": between(0, MAX_SEED),
        "data.kind": one_of(DATA_KINDS),
        "data.n_query": at_least(1),
        "data.n_train": at_least(1),
        "data.modalities": one_of(MODALITIES),
        "image.backbone": one_of(VARIANTS),
        "image.size": between(32, 1024),
        "image.finetune_blocks": between(0, 16),
        "text.encoder": one_of(TEXT_ENCODERS),
        "text.tokenizer": one_of(TOKENIZER_MODES),
        "text.ngram": at_least(1),
        "text.min_count": at_least(1),
        "text.max_vocab": at_least(1),
        "text.max_length": between(3, 512),
        "text.cell": one_of(RECURRENT_CELLS),
        "text.embedding_dim": at_least(1),
        "text.rnn_hidden": at_least(1),
        "text.pooling": one_of(RECURRENT_POOLING),
        "video.backbone": one_of(VARIANTS),
        "video.size": between(32, 1024),
        "video.frames": at_least(1),
        "video.clips": at_least(1),
        "video.temporal": Rule(lambda v: v in ("conv3d", "mean"), "'conv3d' or 'mean'"),
        "video.width": at_least(1),
        "video.blocks": at_least_0,
        "video.time_bins": at_least(1),
        "video.workers": at_least(1),
        "train.epochs": at_least(1),
        "train.batch_size": at_least(1),
        "train.lr": Rule(lambda v: v > 0, "above 0"),
        "train.weight_decay": at_least_0,
        "train.eval_every": Rule(lambda v: v >= 0, "at least 0 (0: no evaluation while training)"),
        "train.device": Rule(
            lambda v: re.fullmatch(r"cpu|cuda(:[0-9]+)?", v) is not None, "cpu, cuda or cuda:N"
        ),
        # torch.set_num_threads overflows on huge counts.
        "train.threads": Rule(lambda v: 0 <= v <= 1024, "between 0 (torch's default) and 1024"),
        "eval.top_r": at_least(1),
        "eval.ks": at_least(1),
    }
    for stream in ("image", "text", "video", "features"):
        rules[f"{stream}.hidden"] = at_least(1)
        rules[f"{stream}.dropout"] = Rule(lambda v: 0 <= v < 1, "at least 0 and below 1")
    return rules


def _check(config: RunConfig) -> None:
    """Refuse values that would crash a run later (or quietly do nothing useful)."""
    _check_finite(config, "")
    check_rules(config, _rules())
    data, image, video = config.data, config.image, config.video
    if not data.modalities:
        raise ConfigError(f"data.modalities is empty; list some of {', '.join(MODALITIES)}")
    if len(set(data.modalities)) < len(data.modalities):
        raise ConfigError(f"data.modalities lists a modality twice: {data.modalities}")
    if not config.eval.ks:
        raise ConfigError("eval.ks is empty; list the P@K cut-offs, e.g. [1, 10, 100]")
    if image.finetune_blocks and image.flip_features:
        raise ConfigError("image.flip_features cannot be combined with image.finetune_blocks")
    if video.frames < video.time_bins:
        raise ConfigError(f"video.time_bins ({video.time_bins}) exceeds video.frames")
    if data.generate:
        if data.kind != "synthetic_video":
            raise ConfigError(
                f"data.generate is only read with data.kind = 'synthetic_video', "
                f"not {data.kind!r}; remove it"
            )
        from model.data.synthetic_video import generate_video_dataset

        data.generate = check_arguments(
            data.generate, generate_video_dataset, "data.generate", "the synthetic_video generator"
        )
        seed = data.generate.get("seed", 0)
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"data.generate.seed must be between 0 and {MAX_SEED}, got {seed}")


def _check_finite(node: Any, name: str) -> None:
    """Refuse nan and infinities anywhere (TOML and --set both accept `nan` and `inf`)."""
    if dataclasses.is_dataclass(node):
        # A method's section (not an init field) is checked under its own name.
        for f in (f for f in dataclasses.fields(node) if f.init):
            _check_finite(getattr(node, f.name), f"{name}.{f.name}" if name else f.name)
    elif isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, f"{name}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_finite(value, f"{name}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{name} must be a finite number, got {node!r}")


def load_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML config (data paths relative to its folder) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        data = _read_toml(Path(path))
        # Anything but a table, or a path that is not a string, is refused by config_from_dict.
        section = data.get("data")
        rel = section.get("path") if isinstance(section, dict) else None
        if isinstance(rel, str) and rel and not Path(rel).is_absolute():
            data["data"]["path"] = str((Path(path).parent / rel).resolve())
    config = config_from_dict(apply_overrides(data, overrides or []))
    # One still relative came from --set, relative to the current folder: stored absolute in
    # the run, so that eval, export and --resume find the data from any folder.
    if config.data.path and not Path(config.data.path).is_absolute():
        config.data.path = str(Path(config.data.path).resolve())
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    """Parse a config file; every way it can be unreadable is a ConfigError naming it."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} not found") from exc
    except IsADirectoryError as exc:
        raise ConfigError(f"config file {path} is a directory, not a TOML file") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8-sig")  # a leading byte-order mark is dropped
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {raw[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8"
        ) from exc
    try:
        return tomllib.loads(text)
    except ValueError as exc:  # TOMLDecodeError, or an integer of more than 4300 digits
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
