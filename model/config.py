"""Run configuration: one dataclass per concern, loaded from TOML and `--set key=value` overrides.

`bits` and `split_seed` are top-level keys so that `--set bits=64 --set split_seed=7` works.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration file or override the user must fix."""


TEXT_ENCODERS = ("bag_of_words", "minilm")


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


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_type(value: Any, default: Any, name: str) -> Any:
    """Require a value of the default's type (ints widen to floats; list items checked too)."""
    if isinstance(default, float) and type(value) is int:
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, list):
            raise ConfigError(f"'{name}' must be a list, got {value!r}")
        if default:
            return [_check_type(v, default[0], f"{name}[{i}]") for i, v in enumerate(value)]
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"'{name}' must be a table, got {value!r}")
        return value
    if type(value) is not type(default):
        wanted = _TYPE_NAMES.get(type(default), type(default).__name__)
        raise ConfigError(f"'{name}' must be {wanted}, got {value!r}")
    return value


def _parse_value(text: str) -> Any:
    """Read an override value as a TOML literal, falling back to a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` overrides to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. bits=64)")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a table")
        node[parts[-1]] = _parse_value(value.strip())
    return data


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Validate and build a RunConfig."""
    config = _build(RunConfig, data, "")
    if config.bits % 8 or not 8 <= config.bits <= 1024:
        raise ConfigError(f"bits must be a multiple of 8 between 8 and 1024, got {config.bits}")
    blocks = config.image.finetune_blocks
    if not 0 <= blocks <= 16:
        raise ConfigError(f"image.finetune_blocks must be between 0 (frozen) and 16, got {blocks}")
    if config.image.finetune_blocks and config.image.flip_features:
        raise ConfigError("image.flip_features cannot be combined with image.finetune_blocks")
    _check_text(config.text)
    _check_video(config.video)
    return config


def _check_video(video: VideoConfig) -> None:
    if video.temporal not in ("conv3d", "mean"):
        raise ConfigError(f"video.temporal must be 'conv3d' or 'mean', got {video.temporal!r}")
    for key in ("frames", "clips", "width", "blocks", "time_bins", "workers"):
        minimum = 0 if key == "blocks" else 1
        if getattr(video, key) < minimum:
            raise ConfigError(f"video.{key} must be at least {minimum}, got {getattr(video, key)}")
    if video.frames < video.time_bins:
        raise ConfigError(f"video.time_bins ({video.time_bins}) exceeds video.frames")
    if not 32 <= video.size <= 1024:
        raise ConfigError(f"video.size must be between 32 and 1024 pixels, got {video.size}")


def _check_text(text: TextConfig) -> None:
    if text.encoder not in TEXT_ENCODERS:
        raise ConfigError(
            f"text.encoder must be one of {', '.join(TEXT_ENCODERS)}, got {text.encoder!r}"
        )
    if not 3 <= text.max_length <= 512:
        raise ConfigError(f"text.max_length must be between 3 and 512, got {text.max_length}")


def load_config(path: Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a TOML config (data paths relative to its folder) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} not found") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        rel = data.get("data", {}).get("path")
        if rel and not Path(rel).is_absolute():
            data["data"]["path"] = str((Path(path).parent / rel).resolve())
    return config_from_dict(apply_overrides(data, overrides or []))
