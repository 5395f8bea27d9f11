"""Export a trained run as a bundle: one TorchScript encoder per modality plus manifest.json.

The bundle is the whole contract with `service/` (its format lives in `bundle/`, which both
sides import; the service never imports `model/`): encoders take prepared inputs (uint8
pixels, a float32 bag of words, int64 token ids and attention mask, int64 word ids with
their lengths, or float32 feature vectors) and return packed uint8 codes, MSB-first
(``codes_and_values`` also gives the real values behind them); files an input needs (a
tokenizer) are copied in beside them. Each input kind (`bundle.inputs`) has one builder
here: its eager encoder and sample inputs. `bundle.writer.BundleWriter` writes the bundle
into a temporary folder, renamed into place only after every traced encoder has been
reloaded from disk and shown to give the eager model's codes bit for bit.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bundle.encoders import VALUES_METHOD, trace
from bundle.inputs import BagOfWords, Clip, Features, InputKind, Pixels, Sentence, TokenIds
from bundle.manifest import MANIFEST
from bundle.sentence import SentenceTokenizer
from bundle.text import Vocabulary
from bundle.writer import BundleWriter
from model.backbones.efficientnet import TrunkFront, load_pretrained
from model.backbones.minilm import MODEL_NAME, load_minilm, tokenizer_path
from model.backbones.video import FrameMaps
from model.checkpoint import load_checkpoint, trained_method
from model.config import ConfigError, RunConfig, config_from_dict
from model.data.images import load_image
from model.data.records import DataError, PairedData
from model.hashing import PixelNormalize, pack_bits
from model.methods.base import Method
from model.prepare import load_dataset

log = logging.getLogger(__name__)

#: Real items and synthetic inputs each encoder is verified on.
REAL_SAMPLES = 12
RANDOM_SAMPLES = 4
VIDEO_SAMPLES = 4  # each is frames x clips images through the trunk
_REQUIRED_STATE = ("config", "model", "input_dims", "kinds", "label_names", "multi_label")


class ExportError(RuntimeError):
    """An export that cannot be finished; no bundle (not even part of one) is left behind."""


class CodeEncoder(nn.Module):
    """An encoder's two traced entry points over its real-valued codes (``values``).

    ``forward`` gives the packed bits; ``codes_and_values`` gives them with the hash layer's
    real values (float32 (n, bits), the pre-sign code a search re-ranks by), from one pass.
    """

    def values(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pack_bits(self.values(x))

    def codes_and_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        real = self.values(x).float()
        return pack_bits(real), real


class ImageEncoder(CodeEncoder):
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

    def values(self, pixels: torch.Tensor) -> torch.Tensor:
        # channels_last as in model/features.py: the trained features were computed this way.
        x = self.normalize(pixels).contiguous(memory_format=torch.channels_last)
        features = self.trunk(x)
        if self.flip:
            features = (features + self.trunk(torch.flip(x, dims=[-1]))) / 2
        return self.stream(features)


class VideoEncoder(CodeEncoder):
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

    def values(self, clips: torch.Tensor) -> torch.Tensor:
        n, size = clips.shape[0], clips.shape[-1]
        x = self.normalize(clips.reshape(-1, 3, size, size))
        maps = self.maps(x.contiguous(memory_format=torch.channels_last))
        return self.stream(maps.reshape(n, -1).to(torch.float16))


class SentenceCodeEncoder(CodeEncoder):
    """int64 (n, 2, L) token ids over attention mask -> frozen sentence encoder -> stream."""

    def __init__(self, sentences: nn.Module, stream: nn.Module) -> None:
        super().__init__()
        self.sentences = sentences
        self.stream = stream

    def values(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.stream(self.sentences(tokens[:, 0], tokens[:, 1]))


class VectorEncoder(CodeEncoder):
    """float32 (n, dim) bag of words or feature vectors -> stream -> packed codes."""

    def __init__(self, stream: nn.Module) -> None:
        super().__init__()
        self.stream = stream

    def values(self, x: torch.Tensor) -> torch.Tensor:
        return self.stream(x)


@dataclass
class ModalityExport:
    """One modality's eager encoder, the input it takes and its verification inputs."""

    modality: str
    encoder: nn.Module
    kind: InputKind
    samples: torch.Tensor


@dataclass
class RunState:
    """A run's checkpoint, read and checked, with its method rebuilt in eval mode."""

    run_dir: Path
    config: RunConfig
    state: dict[str, Any]
    method: Method


@dataclass
class _Source:
    """What an export builder draws on: the run, and some of its data when it is readable."""

    run: RunState
    modality: str
    data: PairedData | None
    rows: np.ndarray

    @property
    def stream(self) -> nn.Module:
        return self.run.method.stream(self.modality)

    @property
    def dim(self) -> int:
        return int(self.run.state["input_dims"][self.modality])


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
        if kind not in _BUILDERS:
            raise ExportError(f"{modality} input kind {kind!r} cannot be exported")
    try:
        method = trained_method(state, config, run_dir)
    except DataError as exc:  # its encoders would give every input one code, and pass checks
        raise ExportError(str(exc)) from None
    return RunState(run_dir=run_dir, config=config, state=state, method=method)


def build_encoders(run: RunState) -> dict[str, ModalityExport]:
    """The eager encoder of every trained modality, with its input kind and sample inputs."""
    data, rows = _sample_source(run.config)
    return {
        modality: _BUILDERS[name](_Source(run, modality, data, rows))
        for modality, name in sorted(run.state["kinds"].items())
    }


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
    verified: dict[str, int] = {}
    with BundleWriter(out) as writer:
        for modality, item in exports.items():
            path = writer.add(modality, trace(item.encoder, item.samples[:2]), item.kind)
            verified[modality] = _verify(item, path)
        writer.finish(
            run.config.bits,
            method=run.config.method,
            label_names=list(run.state["label_names"]),
            multi_label=bool(run.state["multi_label"]),
            provenance=_provenance(run, verified),
        )
    log.info("exported %s to %s: %d bits, %s", run.run_dir, out, run.config.bits, sorted(exports))
    return out


def _provenance(run: RunState, verified: dict[str, int]) -> dict[str, Any]:
    config, state = run.config, run.state
    return {
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


def _verify(item: ModalityExport, path: Path) -> int:
    """Reload the written encoder; refuse unless it reproduces the eager codes exactly."""
    scripted = torch.jit.load(str(path), map_location="cpu").eval()
    samples = item.samples
    batches = [samples, samples[:1], samples[-3:]]
    if isinstance(item.kind, TokenIds):
        # Batches vary in width: one wider than the traced example's, one of a single column.
        wide = np.zeros((1, samples.shape[1] + 5), dtype=np.int64)
        narrow = item.kind.vectorize(["sky", ""])[0]
        widened = item.kind.collate([samples.numpy(), wide])
        batches += [torch.from_numpy(widened), torch.from_numpy(narrow)]
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
            if hasattr(item.encoder, VALUES_METHOD):
                _verify_values(item, getattr(scripted, VALUES_METHOD)(batch), eager)
    return len(samples)


def _verify_values(item: ModalityExport, traced: Any, eager_codes: torch.Tensor) -> None:
    """The traced real values must carry the very bits ``forward`` gives, and be finite."""
    codes, values = traced
    bits = eager_codes.shape[1] * 8
    if values.dtype != torch.float32 or tuple(values.shape) != (len(eager_codes), bits):
        raise ExportError(
            f"{item.modality} encoder: TorchScript {VALUES_METHOD} returned {values.dtype} "
            f"{tuple(values.shape)}, not float32 ({len(eager_codes)}, {bits}); no bundle written"
        )
    if not bool(torch.equal(codes, eager_codes)) or not bool(
        torch.equal(pack_bits(values), eager_codes)
    ):
        raise ExportError(
            f"{item.modality} encoder: the real-valued codes' signs differ from the codes; "
            "no bundle written"
        )
    if not bool(torch.isfinite(values).all()):
        raise ExportError(f"{item.modality} encoder: real-valued codes are not finite")


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


def _pixels(source: _Source) -> ModalityExport:
    image = source.run.config.image
    backbone = load_pretrained(image.backbone)
    tail = image.finetune_blocks
    # With fine-tuning, the stream holds the trained tail; the frozen front feeds it.
    trunk: nn.Module = TrunkFront(backbone, tail) if tail else backbone
    mean, std = backbone.spec.mean, backbone.spec.std
    encoder = ImageEncoder(trunk, mean, std, source.stream, image.flip_features)
    kind = Pixels(image.size, image.backbone, mean, std, image.flip_features)
    data, real = source.data, []
    if data is not None and data.image_paths is not None:
        for row in source.rows:
            path = data.image_paths[row]
            if path is not None and Path(path).is_file():
                real.append(load_image(Path(path), image.size))
    if not real:
        log.warning("no image files of the run are readable; verifying on random pixels only")
    return _export(source, encoder, kind, real)


def _clip(source: _Source) -> ModalityExport:
    video = source.run.config.video
    backbone = load_pretrained(video.backbone)
    mean, std = backbone.spec.mean, backbone.spec.std
    encoder = VideoEncoder(FrameMaps(backbone), mean, std, source.stream)
    kind = Clip(
        frames=video.frames,
        size=video.size,
        clips=video.clips,
        backbone=video.backbone,
        temporal=video.temporal,
        mean=mean,
        std=std,
    )
    data, real = source.data, []
    if data is not None and data.video_paths is not None:
        for row in source.rows[:VIDEO_SAMPLES]:
            path = data.video_paths[row]
            if path is not None and Path(path).is_file():
                real.append(kind.prepare(path))
    if not real:
        log.warning("no video files of the run are readable; verifying on random clips only")
    return _export(source, encoder, kind, real)


def _bag_of_words(source: _Source) -> ModalityExport:
    stored = source.run.state.get("vocabulary")
    if not stored:
        raise ExportError(f"checkpoint in {source.run.run_dir} has a text stream but no vocabulary")
    kind = BagOfWords(Vocabulary.from_json(stored))
    texts = _texts(source)
    if not texts:
        log.warning("no texts of the run are readable; verifying on random bags of words only")
    # With the texts, a text with no known word.
    real = [*kind.vocabulary.encode(texts), np.zeros(len(kind.vocabulary), np.float32)]
    return _export(source, VectorEncoder(source.stream), kind, real)


def _sentence(source: _Source) -> ModalityExport:
    tokenizer = SentenceTokenizer(tokenizer_path(), source.run.config.text.max_length)
    kind = Sentence(tokenizer, encoder=MODEL_NAME)
    texts = _texts(source)
    if not texts:
        log.warning("no texts of the run are readable; verifying on made-up sentences only")
    # An empty text, one cut at max_length, and characters outside the vocabulary.
    texts += ["", "a photo " * tokenizer.max_length, "Çà et là, 猫 🐈 — ok?", "two dogs play"]
    encoder = SentenceCodeEncoder(load_minilm(), source.stream)
    return _export(source, encoder, kind, list(kind.vectorize(texts)[0]))


def _token_ids(source: _Source) -> ModalityExport:
    stored = source.run.state.get("vocabulary")
    if not stored:
        raise ExportError(f"checkpoint in {source.run.run_dir} has a text stream but no vocabulary")
    text = source.run.config.text
    kind = TokenIds(Vocabulary.from_json(stored), text.max_length, text.cell)
    texts = _texts(source)
    if not texts:
        log.warning("no texts of the run are readable; verifying on made-up sentences only")
    # An empty text, one cut at max_length, and words outside the vocabulary.
    texts += ["", "a photo " * kind.max_length, "Çà et là, 猫 🐈 — ok?", "two dogs play"]
    samples = kind.collate([kind.vectorize(texts)[0], kind.probe(RANDOM_SAMPLES)])
    return ModalityExport(
        source.modality, VectorEncoder(source.stream).eval(), kind, torch.from_numpy(samples)
    )


def _features(source: _Source) -> ModalityExport:
    kind, stream = Features(source.dim), source.stream
    features = getattr(source.data, f"{source.modality}_features", None)
    real: list[np.ndarray] = []
    if features is not None and features.shape[1] == kind.dim:
        real = list(np.asarray(features[source.rows], dtype=np.float32))
    if not real:
        log.warning(
            "no %s feature rows of the run are readable; using synthetic ones", source.modality
        )
    # Probes standardised the other way round: vectors where the trained stream expects them.
    probe = torch.from_numpy(kind.probe(RANDOM_SAMPLES))
    synthetic = (stream.shift + probe * stream.scale).float().numpy()  # type: ignore[operator]
    return ModalityExport(
        source.modality,
        VectorEncoder(stream).eval(),
        kind,
        torch.from_numpy(np.stack(real + list(synthetic))),
    )


def _export(
    source: _Source, encoder: nn.Module, kind: InputKind, real: list[np.ndarray]
) -> ModalityExport:
    """The encoder checked on the run's own items (when readable) and on the kind's probes."""
    samples = np.concatenate([*([np.stack(real)] if real else []), kind.probe(RANDOM_SAMPLES)])
    return ModalityExport(source.modality, encoder.eval(), kind, torch.from_numpy(samples))


def _texts(source: _Source) -> list[str]:
    data = source.data
    return [] if data is None or data.texts is None else [data.texts[r] for r in source.rows]


#: How each input kind a run trained on is exported: its eager encoder and samples.
_BUILDERS: dict[str, Callable[[_Source], ModalityExport]] = {
    Pixels.name: _pixels,
    Clip.name: _clip,
    BagOfWords.name: _bag_of_words,
    Sentence.name: _sentence,
    TokenIds.name: _token_ids,
    Features.name: _features,
}


def _occupied(out: Path) -> bool:
    return out.exists() and (not out.is_dir() or any(out.iterdir()))


def _version() -> str:
    try:
        return importlib.metadata.version("hashbridge")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
