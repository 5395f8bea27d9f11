"""Export a trained run as a bundle: one TorchScript encoder per modality plus manifest.json.

The bundle is the whole contract with `service/` (see `service/encoders.py`, which loads it
without importing `model/`): encoders take prepared inputs (uint8 pixels, a float32 bag of
words, int64 token ids and attention mask, or float32 feature vectors) and return packed
uint8 codes, MSB-first; files an input needs (a tokenizer) are copied in beside them. The bundle is
written into a temporary folder and renamed into place only after every traced encoder has
been reloaded from disk and shown to give the eager model's codes bit for bit.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hashbridge.bundle_format import FORMAT_VERSION, MANIFEST, SPEC_DIGEST, spec_digest
from hashbridge.clips import decode_clip
from hashbridge.digests import file_sha256
from model.backbones.efficientnet import TrunkFront, load_pretrained
from model.backbones.minilm import MODEL_NAME, Tokens, load_minilm, tokenizer_path
from model.backbones.video import FrameMaps
from model.checkpoint import load_checkpoint, trained_method
from model.config import ConfigError, RunConfig, config_from_dict
from model.data.images import load_image
from model.data.records import DataError, PairedData
from model.hashing import PixelNormalize, pack_bits
from model.methods.base import Method
from model.prepare import load_dataset
from model.text import Vocabulary

log = logging.getLogger(__name__)

#: Kinds of model input (see model/prepare.py); each is also the manifest's "input" name.
KINDS = ("pixels", "clip", "bag_of_words", "sentence", "features")
#: Real items and synthetic inputs each encoder is verified on.
REAL_SAMPLES = 12
RANDOM_SAMPLES = 4
VIDEO_SAMPLES = 4  # each is frames x clips images through the trunk
SENTENCE_TOKENIZER = "tokenizer.json"
_REQUIRED_STATE = ("config", "model", "input_dims", "kinds", "label_names", "multi_label")


class ExportError(RuntimeError):
    """An export that cannot be finished; no bundle (not even part of one) is left behind."""


class ImageEncoder(nn.Module):
    """uint8 (n, 3, s, s) -> normalise -> frozen trunk (flip-averaged) -> image stream -> codes."""

    def __init__(
        self,
        trunk: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        stream: nn.Module,
        flip: bool,
    ) -> None:
        super().__init__()
        self.normalize = PixelNormalize(mean, std)
        self.trunk = trunk
        self.stream = stream
        self.flip = flip

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        # channels_last as in model/features.py: the trained features were computed this way.
        x = self.normalize(pixels).contiguous(memory_format=torch.channels_last)
        features = self.trunk(x)
        if self.flip:
            features = (features + self.trunk(torch.flip(x, dims=[-1]))) / 2
        return pack_bits(self.stream(features))


class VideoEncoder(nn.Module):
    """uint8 (n, clips, frames, 3, s, s) -> normalise -> frozen per-frame maps -> video stream.

    The maps are rounded to float16 as the training cache stores them (model/video_features.py).
    """

    def __init__(
        self, maps: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], stream: nn.Module
    ) -> None:
        super().__init__()
        self.normalize = PixelNormalize(mean, std)
        self.maps = maps
        self.stream = stream

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        n, size = clips.shape[0], clips.shape[-1]
        x = self.normalize(clips.reshape(-1, 3, size, size))
        maps = self.maps(x.contiguous(memory_format=torch.channels_last))
        return pack_bits(self.stream(maps.reshape(n, -1).to(torch.float16)))


class SentenceCodeEncoder(nn.Module):
    """int64 (n, 2, L) token ids over attention mask -> frozen sentence encoder -> stream."""

    def __init__(self, sentences: nn.Module, stream: nn.Module) -> None:
        super().__init__()
        self.sentences = sentences
        self.stream = stream

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return pack_bits(self.stream(self.sentences(tokens[:, 0], tokens[:, 1])))


class VectorEncoder(nn.Module):
    """float32 (n, dim) bag of words or feature vectors -> stream -> packed codes."""

    def __init__(self, stream: nn.Module) -> None:
        super().__init__()
        self.stream = stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pack_bits(self.stream(x))


@dataclass
class ModalityExport:
    """One modality's eager encoder, its manifest entry and its verification inputs."""

    modality: str
    kind: str
    encoder: nn.Module
    spec: dict[str, Any]
    samples: torch.Tensor
    #: Files copied into the bundle beside the encoder (bundle name -> source).
    assets: dict[str, Path] = field(default_factory=dict)


@dataclass
class RunState:
    """A run's checkpoint, read and checked, with its method rebuilt in eval mode."""

    run_dir: Path
    config: RunConfig
    state: dict[str, Any]
    method: Method


def load_run(run_dir: Path | str) -> RunState:
    """Read a run's checkpoint and rebuild its trained method (eval mode, CPU)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(
            f"run directory {run_dir} does not exist; train one with: hashbridge train --out DIR"
        )
    try:
        state = load_checkpoint(run_dir)
    except FileNotFoundError as exc:
        raise ExportError(str(exc)) from None
    missing = [key for key in _REQUIRED_STATE if key not in state]
    if missing:
        raise ExportError(
            f"checkpoint in {run_dir} lacks {', '.join(missing)}; it was written by an older "
            "hashbridge: retrain (or resume) the run to export it"
        )
    try:
        config = config_from_dict(state["config"])
    except ConfigError as exc:
        raise ExportError(f"checkpoint in {run_dir} holds an invalid config: {exc}") from None
    for modality, kind in state["kinds"].items():
        if kind not in KINDS:
            raise ExportError(f"{modality} input kind {kind!r} cannot be exported")
    try:
        method = trained_method(state, config, run_dir)
    except DataError as exc:  # its encoders would give every input one code, and pass checks
        raise ExportError(str(exc)) from None
    return RunState(run_dir=run_dir, config=config, state=state, method=method)


def build_encoders(run: RunState) -> dict[str, ModalityExport]:
    """The eager encoder of every trained modality, with its manifest entry and sample inputs."""
    config, state = run.config, run.state
    data, rows = _sample_source(config)
    exports: dict[str, ModalityExport] = {}
    for modality, kind in sorted(state["kinds"].items()):
        stream = run.method.stream(modality)
        dim = int(state["input_dims"][modality])
        assets: dict[str, Path] = {}
        if kind == "pixels":
            backbone = load_pretrained(config.image.backbone)
            spec_b = backbone.spec
            tail = config.image.finetune_blocks
            # With fine-tuning, the stream holds the trained tail; the frozen front feeds it.
            trunk: nn.Module = TrunkFront(backbone, tail) if tail else backbone
            encoder: nn.Module = ImageEncoder(
                trunk, spec_b.mean, spec_b.std, stream, config.image.flip_features
            )
            spec = {
                "input": "pixels",
                "size": config.image.size,
                "dtype": "uint8",
                "layout": "NCHW RGB",
                "resize": "EXIF transpose, shorter side bilinear to size, centre crop",
                "backbone": config.image.backbone,
                "mean": list(spec_b.mean),
                "std": list(spec_b.std),
                "flip_features": config.image.flip_features,
            }
            samples = _pixel_samples(data, rows, config.image.size)
        elif kind == "clip":
            encoder, spec = _video_encoder(config, stream)
            samples = _clip_samples(data, rows, config)
        elif kind == "bag_of_words":
            if not state.get("vocabulary"):
                raise ExportError(
                    f"checkpoint in {run.run_dir} has a text stream but no vocabulary"
                )
            vocabulary = Vocabulary.from_json(state["vocabulary"])
            encoder = VectorEncoder(stream)
            spec = {"input": "bag_of_words", "dim": dim, "vocabulary": vocabulary.to_json()}
            samples = _text_samples(data, rows, vocabulary)
        elif kind == "sentence":
            tokens = Tokens(tokenizer_path(), config.text.max_length)
            encoder = SentenceCodeEncoder(load_minilm(), stream)
            spec = _sentence_spec(tokens)
            samples = _sentence_samples(data, rows, tokens)
            assets = {SENTENCE_TOKENIZER: tokens.path}
        else:
            encoder = VectorEncoder(stream)
            spec = {"input": "features", "dim": dim, "dtype": "float32"}
            samples = _feature_samples(data, rows, modality, stream, dim)
        exports[modality] = ModalityExport(modality, kind, encoder.eval(), spec, samples, assets)
    return exports


def export_bundle(run_dir: Path | str, out_dir: Path | str, *, overwrite: bool = False) -> Path:
    """Write a verified bundle for the run into `out_dir` and return it."""
    out = Path(out_dir)
    if _occupied(out) and not overwrite:
        raise ExportError(
            f"{out} already exists and is not empty; choose another folder or overwrite it "
            "(hashbridge export --force)"
        )
    if Path(run_dir).resolve().is_relative_to(out.resolve()):
        raise ExportError(f"{out} holds the run {run_dir}; write the bundle to another folder")
    if _occupied(out) and not (out / MANIFEST).is_file():
        # --force replaces an earlier bundle, never a folder of something else.
        raise ExportError(
            f"{out} is not empty and is not a bundle (it has no {MANIFEST}); --force only "
            "replaces a bundle: choose an empty or new folder"
        )
    run = load_run(run_dir)
    exports = build_encoders(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-", suffix=".tmp"))
    try:
        files: dict[str, str] = {}
        modalities: dict[str, dict[str, Any]] = {}
        verified: dict[str, int] = {}
        for modality, item in exports.items():
            name = f"{modality}.pt"
            _trace(item, tmp / name)
            verified[modality] = _verify(item, tmp / name)
            files[name] = file_sha256(tmp / name)
            for asset, source in item.assets.items():
                shutil.copyfile(source, tmp / asset)
                _fsync(tmp / asset)
                files[asset] = file_sha256(tmp / asset)
            modalities[modality] = {"file": name, **item.spec}
        manifest = _manifest(run, modalities, files, verified)
        _write_text(tmp / MANIFEST, json.dumps(manifest, indent=2) + "\n")
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %s to %s: %d bits, %s", run.run_dir, out, run.config.bits, sorted(exports))
    return out


def _manifest(
    run: RunState,
    modalities: dict[str, dict[str, Any]],
    files: dict[str, str],
    verified: dict[str, int],
) -> dict[str, Any]:
    config, state = run.config, run.state
    return {
        "format_version": FORMAT_VERSION,
        "method": config.method,
        "bits": config.bits,
        "label_names": list(state["label_names"]),
        "multi_label": bool(state["multi_label"]),
        "modalities": modalities,
        "files": files,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "hashbridge_version": _version(),
        "torch_version": torch.__version__,
        "source": {
            "run": str(run.run_dir.resolve()),
            "epoch": state.get("epoch"),
            "dataset": config.data.kind,
            "split_seed": config.split_seed,
        },
        "verified_samples": verified,
    }


def _trace(item: ModalityExport, path: Path) -> None:
    example = item.samples[:2]
    # Shape-dependent Python values (TF 'SAME' padding) are fixed by the input size, which
    # the manifest pins; the batch axis stays dynamic and _verify checks several batch sizes.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(item.encoder, example, check_trace=False)
    traced.save(str(path), _extra_files={SPEC_DIGEST: spec_digest(item.spec)})
    _fsync(path)


def _verify(item: ModalityExport, path: Path) -> int:
    """Reload the written encoder; refuse unless it reproduces the eager codes exactly."""
    scripted = torch.jit.load(str(path), map_location="cpu").eval()
    samples = item.samples
    batches = [samples, samples[:1], samples[-3:]]
    with torch.inference_mode():
        for batch in batches:
            eager = item.encoder(batch)
            got = scripted(batch)
            if got.dtype != torch.uint8 or got.shape != eager.shape:
                raise ExportError(
                    f"{item.modality} encoder: TorchScript returned {got.dtype} "
                    f"{tuple(got.shape)}, the eager model {eager.dtype} {tuple(eager.shape)}; "
                    "no bundle written"
                )
            differ = (got != eager).any(dim=1)
            if bool(differ.any()):
                raise ExportError(
                    f"{item.modality} encoder: TorchScript codes differ from the eager model on "
                    f"{int(differ.sum())} of {len(batch)} sample inputs; no bundle written"
                )
    return len(samples)


def _sample_source(config: RunConfig) -> tuple[PairedData | None, np.ndarray]:
    """The run's data and some training rows, or None (with a warning) when it is unavailable."""
    try:
        data, split = load_dataset(config)
    except (DataError, ConfigError, OSError, ValueError) as exc:
        log.warning(
            "cannot load the run's data (%s); verifying the export on synthetic inputs only", exc
        )
        return None, np.zeros(0, dtype=np.int64)
    return data, np.asarray(split.train[:REAL_SAMPLES], dtype=np.int64)


def _pixel_samples(data: PairedData | None, rows: np.ndarray, size: int) -> torch.Tensor:
    images: list[np.ndarray] = []
    if data is not None and data.image_paths is not None:
        for row in rows:
            path = data.image_paths[row]
            if path is not None and Path(path).is_file():
                images.append(load_image(Path(path), size))
    if not images:
        log.warning("no image files of the run are readable; verifying on random pixels only")
    rng = np.random.default_rng(0)
    images += list(rng.integers(0, 256, size=(RANDOM_SAMPLES, 3, size, size), dtype=np.uint8))
    return torch.from_numpy(np.stack(images))


def _video_encoder(config: RunConfig, stream: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    video = config.video
    backbone = load_pretrained(video.backbone)
    encoder = VideoEncoder(FrameMaps(backbone), backbone.spec.mean, backbone.spec.std, stream)
    spec = {
        "input": "clip",
        "frames": video.frames,
        "size": video.size,
        "clips": video.clips,
        "dtype": "uint8",
        "layout": "N clips frames C H W, RGB",
        "sampling": "clips equal windows end to end; frames at the centres of equal segments "
        "of each, by presentation time (hashbridge.clips.decode_clip)",
        "resize": "display matrix applied, shorter side bilinear to size, centre crop",
        "backbone": video.backbone,
        "temporal": video.temporal,
        "mean": list(backbone.spec.mean),
        "std": list(backbone.spec.std),
    }
    return encoder, spec


def _clip_samples(data: PairedData | None, rows: np.ndarray, config: RunConfig) -> torch.Tensor:
    video = config.video
    clips: list[np.ndarray] = []
    if data is not None and data.video_paths is not None:
        for row in rows[:VIDEO_SAMPLES]:
            path = data.video_paths[row]
            if path is not None and Path(path).is_file():
                clips.append(
                    decode_clip(path, frames=video.frames, size=video.size, clips=video.clips)
                )
    if not clips:
        log.warning("no video files of the run are readable; verifying on random clips only")
    rng = np.random.default_rng(0)
    shape = (RANDOM_SAMPLES, video.clips, video.frames, 3, video.size, video.size)
    clips += list(rng.integers(0, 256, size=shape, dtype=np.uint8))
    return torch.from_numpy(np.stack(clips))


def _text_samples(
    data: PairedData | None, rows: np.ndarray, vocabulary: Vocabulary
) -> torch.Tensor:
    texts = [] if data is None or data.texts is None else [data.texts[r] for r in rows]
    if not texts:
        log.warning("no texts of the run are readable; verifying on random bags of words only")
    rng = np.random.default_rng(0)
    bags = [vocabulary.encode(texts)] if texts else []
    rand = (rng.random((RANDOM_SAMPLES, len(vocabulary))) < 0.05).astype(np.float32)
    rand[0] = 0.0  # a text with no known word
    return torch.from_numpy(np.concatenate([*bags, rand]))


def _sentence_spec(tokens: Tokens) -> dict[str, Any]:
    return {
        "input": "sentence",
        "encoder": MODEL_NAME,
        "tokenizer": SENTENCE_TOKENIZER,
        "max_length": tokens.max_length,
        "pad_id": tokens.pad_id,
        "dtype": "int64",
        "layout": "N 2 max_length: token ids, then the attention mask (1 = token, 0 = padding)",
        "truncation": "to max_length tokens, [CLS] and [SEP] included; padded on the right",
    }


def _sentence_samples(data: PairedData | None, rows: np.ndarray, tokens: Tokens) -> torch.Tensor:
    texts = [] if data is None or data.texts is None else [data.texts[r] for r in rows]
    if not texts:
        log.warning("no texts of the run are readable; verifying on made-up sentences only")
    # An empty text, one cut at max_length, and characters outside the vocabulary.
    texts += ["", "a photo " * tokens.max_length, "Çà et là, 猫 🐈 — ok?", "two dogs play"]
    ids, mask = tokens.encode(texts)
    return torch.from_numpy(np.stack([ids, mask], axis=1))


def _feature_samples(
    data: PairedData | None, rows: np.ndarray, modality: str, stream: nn.Module, dim: int
) -> torch.Tensor:
    parts: list[np.ndarray] = []
    if data is not None:
        features = getattr(data, f"{modality}_features", None)
        if features is not None and features.shape[1] == dim:
            parts.append(np.asarray(features[rows], dtype=np.float32))
    if not parts:
        log.warning("no %s feature rows of the run are readable; using synthetic ones", modality)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(RANDOM_SAMPLES, dim, generator=gen)
    synthetic = stream.shift + noise * stream.scale  # type: ignore[operator]
    return torch.cat([torch.from_numpy(p) for p in parts] + [synthetic.float()])


def _occupied(out: Path) -> bool:
    return out.exists() and (not out.is_dir() or any(out.iterdir()))


def _install(tmp: Path, out: Path) -> None:
    """Move the finished folder into place; an old bundle is replaced only once the new is whole."""
    # mkdtemp makes the folder private (0700); a bundle is meant to be read by a service that
    # may run as another user (the container's), so give it the usual umask'd permissions.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    _fsync_dir(tmp)
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = out.with_name(f".{out.name}-old-{os.getpid()}")
            os.replace(out, old)
    os.replace(tmp, out)
    _fsync_dir(out.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()  # a file, or a link to the earlier bundle (left where it points)


def _write_text(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _version() -> str:
    try:
        return importlib.metadata.version("hashbridge")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
