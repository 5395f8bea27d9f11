"""Run configuration: one dataclass per concern, loaded from TOML and `--set key=value` overrides.

`bits` and `split_seed` are top-level keys so that `--set bits=64 --set split_seed=7` works.
Every value is checked when the config is built (types in `_build`, ranges and choices in
`_check`), so a mistake is a one-line ConfigError before any data is read.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

# Code widths: only what the Hamming index (and so the service) takes.
from index.codes import MAX_BITS, MIN_BITS
from model.text import TOKENIZER_MODES


class ConfigError(ValueError):
    """A configuration file or override the user must fix."""


TEXT_ENCODERS = ("bag_of_words", "minilm")
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
    """Text stream: bag of words or character n-grams, or a frozen sentence encoder; an MLP."""

    encoder: str = "bag_of_words"  # bag_of_words | minilm (pretrained English, for captions)
    tokenizer: str = "word"  # word | char (bag_of_words only)
    ngram: int = 2
    min_count: int = 1
    max_vocab: int = 20000
    max_length: int = 64  # minilm: tokens per text, special tokens included (longer is cut)
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
class LossConfig:
    """DSMHN loss terms and their weights."""

    similarity: str = "pairwise_nll"  # pairwise_nll | contrastive | triplet | tie_aware_ap
    similarity_params: dict[str, Any] = field(default_factory=dict)
    w_similarity: float = 1.0
    w_ranking: float = 0.0  # a tie-aware AP term added to the similarity loss; 0: off
    w_intra: float = 0.0
    w_semantic: float = 1.0
    w_quantization: float = 0.1
    w_balance: float = 0.01
    shared_label_head: bool = True
    binary_bank: bool = False  # match each batch against the signs of the other modality's codes
    tanh_scale_growth: float = 0.0  # tanh(beta x) with beta = sqrt(1 + growth * epoch); 0: off


@dataclass
class DJSRHConfig:
    """DJSRH (unsupervised): its joint-semantics matrix, loss weights and SGD optimiser.

    Defaults are the reference code's for MIRFlickr (zzs1994/DJSRH settings.py).
    """

    beta: float = 0.9  # weight of the media (image/video) similarity in the fused matrix
    eta: float = 0.4  # weight of the second-order (neighbourhood) term
    mu: float = 1.5  # scale of the joint-semantics matrix
    lambda_media: float = 0.1  # intra-modal term of the image / video codes (lambda1)
    lambda_text: float = 0.1  # intra-modal term of the text codes (lambda2)
    optimizer: str = "sgd"  # sgd (the reference's, with momentum) | adam
    image_lr: float = 0.001  # learning rates per stream (train.lr is DSMHN's)
    video_lr: float = 0.001
    text_lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4


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
    loss: LossConfig = field(default_factory=LossConfig)
    djsrh: DJSRHConfig = field(default_factory=DJSRHConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a dataclass from a dict, refusing unknown keys with the path that holds them."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(
                f"unknown config key '{where}{key}'; known: {', '.join(sorted(known))}"
            )
        default = (
            known[key].default_factory()
            if known[key].default_factory is not dataclasses.MISSING
            else known[key].default
        )  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            if not isinstance(value, dict):
                raise ConfigError(f"'{where}{key}' must be a table")
            value = _build(type(default), value, f"{where}{key}.")
        else:
            value = _check_type(value, default, f"{where}{key}")
        kwargs[key] = value
    return cls(**kwargs)


def _show(value: Any) -> str:
    """repr() cut to a length that keeps an error message on one readable line."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_type(value: Any, default: Any, name: str) -> Any:
    """Require a value of the default's type (ints widen to floats; list items checked too)."""
    if isinstance(default, float) and type(value) is int:
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(
                f"'{name}' is too large: an integer of {len(str(value))} digits"
            ) from None
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"'{name}' must be a list, got {_show(value)}")
        if default:
            return [_check_type(v, default[0], f"{name}[{i}]") for i, v in enumerate(value)]
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"'{name}' must be a table, got {_show(value)}")
        return value
    if type(value) is not type(default):
        wanted = _TYPE_NAMES.get(type(default), type(default).__name__)
        raise ConfigError(f"'{name}' must be {wanted}, got {_show(value)}")
    return value


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
            raise ConfigError(f"override {_show(item)} must look like key=value (e.g. bits=64)")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {_show(item)}: '{part}' is not a table")
        node[parts[-1]] = _parse_value(value.strip())
    return data


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Validate and build a RunConfig."""
    config = _build(RunConfig, data, "")
    _check(config)
    return config


class _Rule(NamedTuple):
    """What one key allows: a test of its (already type-checked) value and how to say it."""

    ok: Callable[[Any], bool]
    allowed: str


def _at_least(low: int) -> _Rule:
    return _Rule(lambda v: v >= low, f"at least {low}")


def _between(low: int, high: int) -> _Rule:
    return _Rule(lambda v: low <= v <= high, f"between {low} and {high}")


def _one_of(choices: Iterable[str]) -> _Rule:
    names = tuple(choices)
    return _Rule(lambda v: v in names, f"one of {', '.join(names)}")


def _rules() -> dict[str, _Rule]:
    """Every range- or choice-checked key; a list value is checked item by item."""
    # The registries live with the code that uses them. Imported here rather than at the top:
    # they pull in torch, and model.methods itself imports this module.
    from model.backbones.efficientnet import VARIANTS
    from model.losses import SIMILARITY_LOSSES
    from model.methods import METHODS

    at_least_0 = _at_least(0)
    rules = {
        "method": _one_of(METHODS),
        "bits": _Rule(
            lambda v: v % 8 == 0 and MIN_BITS <= v <= MAX_BITS,
            f"a multiple of 8 between {MIN_BITS} and {MAX_BITS} (what the index and service take)",
        ),
        "seed": _between(0, MAX_SEED),
        "split_seed": _between(0, MAX_SEED),
        "data.kind": _one_of(DATA_KINDS),
        "data.n_query": _at_least(1),
        "data.n_train": _at_least(1),
        "data.modalities": _one_of(MODALITIES),
        "image.backbone": _one_of(VARIANTS),
        "image.size": _between(32, 1024),
        "image.finetune_blocks": _between(0, 16),
        "text.encoder": _one_of(TEXT_ENCODERS),
        "text.tokenizer": _one_of(TOKENIZER_MODES),
        "text.ngram": _at_least(1),
        "text.min_count": _at_least(1),
        "text.max_vocab": _at_least(1),
        "text.max_length": _between(3, 512),
        "video.backbone": _one_of(VARIANTS),
        "video.size": _between(32, 1024),
        "video.frames": _at_least(1),
        "video.clips": _at_least(1),
        "video.temporal": _Rule(lambda v: v in ("conv3d", "mean"), "'conv3d' or 'mean'"),
        "video.width": _at_least(1),
        "video.blocks": at_least_0,
        "video.time_bins": _at_least(1),
        "video.workers": _at_least(1),
        "loss.similarity": _one_of(SIMILARITY_LOSSES),
        "loss.tanh_scale_growth": at_least_0,
        "train.epochs": _at_least(1),
        "train.batch_size": _at_least(1),
        "train.lr": _Rule(lambda v: v > 0, "above 0"),
        "train.weight_decay": at_least_0,
        "train.eval_every": _Rule(lambda v: v >= 0, "at least 0 (0: no evaluation while training)"),
        "train.device": _Rule(
            lambda v: re.fullmatch(r"cpu|cuda(:[0-9]+)?", v) is not None, "cpu, cuda or cuda:N"
        ),
        # torch.set_num_threads overflows on huge counts.
        "train.threads": _Rule(lambda v: 0 <= v <= 1024, "between 0 (torch's default) and 1024"),
        "eval.top_r": _at_least(1),
        "eval.ks": _at_least(1),
    }
    for stream in ("image", "text", "video", "features"):
        rules[f"{stream}.hidden"] = _at_least(1)
        rules[f"{stream}.dropout"] = _Rule(lambda v: 0 <= v < 1, "at least 0 and below 1")
    for weight in (f.name for f in dataclasses.fields(LossConfig) if f.name.startswith("w_")):
        rules[f"loss.{weight}"] = at_least_0
    share = _Rule(lambda v: 0 <= v <= 1, "between 0 and 1")
    positive = _Rule(lambda v: v > 0, "above 0")
    rules.update({"djsrh.beta": share, "djsrh.eta": share})
    rules["djsrh.momentum"] = _Rule(lambda v: 0 <= v < 1, "at least 0 and below 1")
    rules["djsrh.optimizer"] = _one_of(("sgd", "adam"))
    for key in ("mu", "image_lr", "video_lr", "text_lr"):
        rules[f"djsrh.{key}"] = positive
    for key in ("lambda_media", "lambda_text", "weight_decay"):
        rules[f"djsrh.{key}"] = at_least_0
    return rules


def _check(config: RunConfig) -> None:
    """Refuse values that would crash a run later (or quietly do nothing useful)."""
    _check_finite(config, "")
    for key, rule in _rules().items():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            if not rule.ok(item):
                name = key if i is None else f"{key}[{i}]"
                raise ConfigError(f"{name} must be {rule.allowed}, got {_show(item)}")
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

        data.generate = _check_arguments(
            data.generate, generate_video_dataset, "data.generate", "the synthetic_video generator"
        )
        seed = data.generate.get("seed", 0)
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"data.generate.seed must be between 0 and {MAX_SEED}, got {seed}")
    _check_similarity(config.loss)


def _check_finite(node: Any, name: str) -> None:
    """Refuse nan and infinities anywhere (TOML and --set both accept `nan` and `inf`)."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _check_finite(getattr(node, f.name), f"{name}.{f.name}" if name else f.name)
    elif isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, f"{name}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_finite(value, f"{name}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{name} must be a finite number, got {node!r}")


def _check_arguments(
    params: dict[str, Any], target: Callable[..., Any], where: str, label: str
) -> dict[str, Any]:
    """Check a table of keyword arguments against `target`'s signature: names, then types.

    A function's first parameter (the generator's output folder) is not the user's to set;
    a class's signature already leaves out `self`.
    """
    parameters = inspect.signature(target).parameters
    names = [
        name
        for i, (name, p) in enumerate(parameters.items())
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and not (i == 0 and inspect.isfunction(target))
    ]
    checked = {}
    for key, value in params.items():
        if key not in names:
            raise ConfigError(
                f"unknown key '{where}.{key}' for {label}; accepted: {', '.join(names) or 'none'}"
            )
        default = parameters[key].default
        if default is not inspect.Parameter.empty and default is not None:
            value = _check_type(value, default, f"{where}.{key}")
        checked[key] = value
    return checked


def _check_similarity(loss: LossConfig) -> None:
    """loss.similarity_params must be arguments the chosen loss takes, with values it accepts."""
    from model.losses import SIMILARITY_LOSSES, make_similarity_loss

    loss.similarity_params = _check_arguments(
        loss.similarity_params,
        SIMILARITY_LOSSES[loss.similarity],
        "loss.similarity_params",
        f"loss.similarity = {loss.similarity!r}",
    )
    try:  # the loss's own checks (e.g. alpha > 0) now, not after feature extraction
        make_similarity_loss(loss.similarity, **loss.similarity_params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"loss.similarity_params for {loss.similarity!r}: {exc}") from None


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
