"""The Encoder protocol and loading of a model bundle (manifest + TorchScript encoders).

A bundle is refused at start-up, with a message naming the problem, when its manifest
is missing or malformed, a file is missing or fails its sha256, the format version is
unknown, or an encoder's output does not have the manifest's code width.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
import numpy.typing as npt
import torch
from tokenizers import Tokenizer

from hashbridge.bundle_format import FORMAT_VERSION, MANIFEST, SPEC_DIGEST, spec_digest
from hashbridge.digests import file_sha256
from index.codes import MAX_BITS, MIN_BITS
from service.errors import BundleError

log = logging.getLogger(__name__)

#: What each modality's encoder takes, as the manifest names it.
INPUTS = {"image": "pixels", "text": "bag_of_words", "video": "clip"}
#: A text encoder takes a bag of words or, for a pretrained sentence encoder, token ids.
TEXT_INPUTS = ("bag_of_words", "sentence")
#: Inputs run through each encoder at load (a check and the bundle's fingerprint).
PROBES = 4
UnicodeForm = Literal["NFC", "NFD", "NFKC", "NFKD"]
MiB = 1 << 20
#: Largest input one item may need (uint8 pixels): 100x a 16-frame 224 px clip.
MAX_INPUT_BYTES = 256 * MiB
#: The traced method of an exported encoder giving (packed codes, real values).
VALUES_METHOD = "codes_and_values"
PROBE_SENTENCES = ("a dog runs on the beach", "two people ride bicycles", "", "red sky at night")


class Encoder(Protocol):
    """Maps a batch of prepared inputs to packed codes, uint8 (n, bits // 8)."""

    modality: str
    bits: int

    def encode(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        """Encode a batch; the first axis is the item axis."""
        ...


class TorchScriptEncoder:
    """An encoder backed by a traced TorchScript module run under inference mode."""

    def __init__(self, modality: str, bits: int, module: torch.jit.ScriptModule) -> None:
        self.modality = modality
        self.bits = bits
        self._module = module
        self._device = torch.device("cpu")
        #: Whether the module also gives its real-valued codes (bundles exported before
        #: re-ranking give bits only).
        self.gives_values = hasattr(module, VALUES_METHOD)

    def to(self, device: torch.device) -> None:
        """Run on `device` from now on (inputs go there, codes come back to the CPU)."""
        self._module.to(device)
        self._device = device

    def encode(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        """Encode a batch and check the output is (n, bits // 8) uint8."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device)
            out = self._module(x)
        codes = out.cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        expected = (batch.shape[0], self.bits // 8)
        if codes.dtype != np.uint8 or codes.shape != expected:
            raise BundleError(
                f"{self.modality} encoder returned {codes.dtype} {codes.shape}; "
                f"the manifest promises uint8 {expected} for {self.bits}-bit codes"
            )
        return codes

    def encode_with_values(
        self, batch: npt.NDArray[Any]
    ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]:
        """Codes and, where the module gives them, the real values behind them (n, bits)."""
        if not self.gives_values:
            return self.encode(batch), None
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device)
            packed, real = getattr(self._module, VALUES_METHOD)(x)
        codes, values = packed.cpu().numpy(), real.cpu().numpy()
        expected = (batch.shape[0], self.bits // 8)
        if codes.dtype != np.uint8 or codes.shape != expected:
            raise BundleError(
                f"{self.modality} encoder returned {codes.dtype} {codes.shape}; "
                f"the manifest promises uint8 {expected} for {self.bits}-bit codes"
            )
        if values.dtype != np.float32 or values.shape != (batch.shape[0], self.bits):
            raise BundleError(
                f"{self.modality} encoder's {VALUES_METHOD} returned {values.dtype} "
                f"{values.shape} real values; expected float32 ({batch.shape[0]}, {self.bits})"
            )
        return codes, values


class TextPreparer(Protocol):
    """Turns texts into the text encoder's input batch, with each text's known-token count."""

    def vectorize(self, texts: Sequence[str]) -> tuple[npt.NDArray[Any], list[int]]:
        """The (n, ...) batch and, per text, how many of its tokens the model knows."""
        ...


@dataclass(frozen=True)
class TextVectorizer:
    """Binary bag of words over the bundle's vocabulary, tokenised as the model side does."""

    tokens: Sequence[str]
    mode: str = "word"
    ngram: int = 2
    pattern: str = r"[^\W_]+"
    normalize: UnicodeForm | None = None  # as the vocabulary was built (None: older bundles)
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})
        object.__setattr__(self, "_regex", re.compile(self.pattern))

    def tokenize(self, text: str) -> list[str]:
        """Split text into vocabulary tokens (words or character n-grams), lower-cased."""
        if self.normalize:
            text = unicodedata.normalize(self.normalize, text)
        words = self._regex.findall(text.lower())
        if self.mode == "word":
            return list(words)
        joined = "".join(words)
        return [joined[i : i + self.ngram] for i in range(max(len(joined) - self.ngram + 1, 0))]

    def vectorize(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], list[int]]:
        """Return the (n, vocab) float32 bag of words and each text's count of known tokens."""
        out = np.zeros((len(texts), len(self.tokens)), dtype=np.float32)
        known: list[int] = []
        for row, text in enumerate(texts):
            cols = [self._index[t] for t in self.tokenize(text) if t in self._index]
            out[row, cols] = 1.0
            known.append(len(cols))
        return out, known


class SentenceTokenizer:
    """Token ids and attention mask for a sentence-encoder text model, from its tokenizer.json.

    Texts are cut to `max_length` tokens ([CLS] and [SEP] included) and right-padded with
    `pad_id`, exactly as the model side tokenised them for export.
    """

    def __init__(self, path: Path, max_length: int, pad_id: int) -> None:
        self.max_length = max_length
        self.pad_id = pad_id
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.enable_truncation(max_length=max_length)
        self._tokenizer.no_padding()
        self._unknown = self._tokenizer.token_to_id("[UNK]")

    def tokenize(
        self, texts: Sequence[str]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], list[int]]:
        """Ids and mask, int64 (n, max_length), and each text's count of known word pieces."""
        ids = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), self.max_length), dtype=np.int64)
        known: list[int] = []
        for row, text in enumerate(texts):
            encoding = self._tokenizer.encode(text)
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
            pieces = zip(encoding.ids, encoding.special_tokens_mask, strict=True)
            known.append(sum(1 for i, special in pieces if not special and i != self._unknown))
        return ids, mask, known

    def vectorize(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], list[int]]:
        """The text encoder's input, int64 (n, 2, max_length) ids over mask, and known counts."""
        ids, mask, known = self.tokenize(texts)
        return np.stack([ids, mask], axis=1), known


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle."""

    path: Path
    method: str
    bits: int
    label_names: list[str]
    encoders: dict[str, Encoder]
    #: Per-modality input settings from the manifest (size, frames, vocabulary).
    inputs: dict[str, dict[str, Any]]
    #: Turns texts into the text encoder's input (a bag of words, or token ids and mask).
    vectorizer: TextPreparer | None
    #: Hash of the codes of fixed probe inputs: equal exactly when codes are comparable.
    fingerprint: str

    @property
    def modalities(self) -> list[str]:
        """Modalities this bundle can encode, sorted."""
        return sorted(self.encoders)


def load_bundle(path: Path | str, device: str = "cpu") -> Bundle:
    """Load and verify a bundle folder; raise BundleError naming the problem.

    The encoders run on `device` ("cpu" or "cuda"). The probes that fingerprint the model
    run on the CPU first, so a collection keeps its fingerprint whichever device encodes.
    """
    root = Path(path)
    target = _encoder_device(device)
    manifest = _read_manifest(root)
    bits = _check_bits(manifest.get("bits"))
    modalities = manifest.get("modalities")
    hashes = manifest.get("files")
    if not isinstance(modalities, dict) or not modalities:
        raise BundleError(f"{root / MANIFEST}: 'modalities' must be a non-empty object")
    if not isinstance(hashes, dict):
        raise BundleError(f"{root / MANIFEST}: 'files' must map file names to sha256 hex")
    encoders: dict[str, Encoder] = {}
    inputs: dict[str, dict[str, Any]] = {}
    vectorizer: TextPreparer | None = None
    fingerprint = hashlib.sha256(str(bits).encode())
    for modality, spec in sorted(modalities.items()):
        spec = _check_spec(root, modality, spec)
        if modality == "text":
            vectorizer = _text_preparer(root, spec, hashes)
        module = _load_module(root, spec, hashes)
        encoder = TorchScriptEncoder(modality, bits, module)
        probe = _probe(encoder, _probe_input(modality, spec, vectorizer), root / str(spec["file"]))
        fingerprint.update(modality.encode() + probe.tobytes())
        encoder.to(target)
        encoders[modality] = encoder
        inputs[modality] = spec
    log.info(
        "loaded %s bundle %s: %d bits, %s on %s",
        manifest.get("method"),
        root,
        bits,
        sorted(encoders),
        target,
    )
    return Bundle(
        path=root,
        method=str(manifest.get("method", "unknown")),
        bits=bits,
        label_names=_label_names(root, manifest.get("label_names")),
        encoders=encoders,
        inputs=inputs,
        vectorizer=vectorizer,
        fingerprint=fingerprint.hexdigest(),
    )


def _label_names(root: Path, names: Any) -> list[str]:
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BundleError(f"{root / MANIFEST}: label_names must be a list of strings")
    return names


def _encoder_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise BundleError(
                "encoder_device is 'cuda' but torch sees no CUDA GPU here; set "
                "HASHBRIDGE_ENCODER_DEVICE=cpu or run on a GPU host"
            )
        return torch.device("cuda")
    raise BundleError(f"encoder_device must be 'cpu' or 'cuda', got {name!r}")


def _read_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        if (root / "checkpoint.pt").is_file():  # hashbridge.cli cannot be named: no model/ here
            raise BundleError(
                f"{root} is a training run, not a bundle: export it first "
                f"(hashbridge export --run {root} --out BUNDLE) and serve BUNDLE"
            )
        raise BundleError(f"bundle {root} has no {MANIFEST}; point bundle_dir at an export folder")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} must hold a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path} has format_version {version!r}; this service reads format_version "
            f"{FORMAT_VERSION} (re-export the bundle or upgrade the service)"
        )
    return manifest


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise BundleError(f"manifest 'bits' must be an integer, got {bits!r}")
    if bits % 8 or not MIN_BITS <= bits <= MAX_BITS:
        raise BundleError(
            f"manifest 'bits' is {bits}; codes must be a multiple of 8 bits "
            f"between {MIN_BITS} and {MAX_BITS}"
        )
    return bits


def _check_spec(root: Path, modality: str, spec: object) -> dict[str, Any]:
    where = f"{root / MANIFEST}: modalities.{modality}"
    if modality not in INPUTS:
        raise BundleError(f"{where}: unknown modality; expected one of {sorted(INPUTS)}")
    if not isinstance(spec, dict) or not isinstance(spec.get("file"), str):
        raise BundleError(f"{where} must be an object with a 'file'")
    if spec.get("input") == "features":
        # Models trained on shipped feature vectors (e.g. Wikipedia's SIFT/LDA) need those
        # extractors, which the bundle does not carry: nothing uploaded can be encoded.
        raise BundleError(
            f"{where} takes precomputed feature vectors (input 'features'), which this "
            "service cannot compute from uploads; serve a model trained on image files "
            "and raw text instead"
        )
    accepted = TEXT_INPUTS if modality == "text" else (INPUTS[modality],)
    if spec.get("input") not in accepted:
        wanted = " or ".join(repr(a) for a in accepted)
        raise BundleError(f"{where}.input is {spec.get('input')!r}; expected {wanted}")
    needed = {"image": ("size",), "video": ("frames", "size", "clips"), "text": ()}[modality]
    for key in needed:
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BundleError(f"{where}.{key} must be a positive integer, got {value!r}")
    if needed:
        # Every input is this large, the start-up probes included: a typo in the manifest
        # (size 100000) would otherwise be a MemoryError before the service could say so.
        pixels = 3 * spec["size"] ** 2 * spec.get("frames", 1) * spec.get("clips", 1)
        if pixels > MAX_INPUT_BYTES:
            shape = " x ".join(f"{key} {spec[key]}" for key in needed)
            raise BundleError(
                f"{where}: inputs of {shape} take {pixels / MiB:,.0f} MiB per item; a bundle "
                f"may ask for at most {MAX_INPUT_BYTES // MiB} MiB"
            )
    return spec


def _text_preparer(
    root: Path, spec: Mapping[str, Any], hashes: Mapping[str, Any]
) -> TextVectorizer | SentenceTokenizer:
    if spec.get("input") == "sentence":
        return _sentence_tokenizer(root, spec, hashes)
    return _vectorizer(root, spec)


def _sentence_tokenizer(
    root: Path, spec: Mapping[str, Any], hashes: Mapping[str, Any]
) -> SentenceTokenizer:
    where = f"{root / MANIFEST}: modalities.text"
    max_length, pad_id = spec.get("max_length"), spec.get("pad_id", 0)
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
        raise BundleError(f"{where}.max_length must be an integer >= 3, got {max_length!r}")
    if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
        raise BundleError(f"{where}.pad_id must be a non-negative integer, got {pad_id!r}")
    name = spec.get("tokenizer")
    if not isinstance(name, str) or not name:
        raise BundleError(f"{where}.tokenizer must name the bundle's tokenizer file")
    path = _checked_file(root, name, hashes)
    try:
        return SentenceTokenizer(path, max_length, pad_id)
    except Exception as exc:  # the tokenizers library raises plain Exception on a bad file
        raise BundleError(f"{path} is not a loadable tokenizer.json: {exc}") from None


def _vectorizer(root: Path, spec: Mapping[str, Any]) -> TextVectorizer:
    where = f"{root / MANIFEST}: modalities.text.vocabulary"
    vocab = spec.get("vocabulary")
    if not isinstance(vocab, dict) or not isinstance(vocab.get("tokens"), list):
        raise BundleError(f"{where} must be an object with a 'tokens' list")
    tokens = vocab["tokens"]
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise BundleError(f"{where}.tokens must be a non-empty list of strings")
    dim = spec.get("dim")
    if isinstance(dim, int) and dim != len(tokens):
        raise BundleError(
            f"{where}.tokens lists {len(tokens)} tokens but the text encoder takes {dim} "
            "inputs (modalities.text.dim); the manifest was edited or mixed with another export"
        )
    mode = vocab.get("mode", "word")
    if mode not in ("word", "char"):
        raise BundleError(f"{where}.mode is {mode!r}; expected 'word' or 'char'")
    ngram = vocab.get("ngram", 2)
    if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
        raise BundleError(f"{where}.ngram must be a positive integer, got {ngram!r}")
    pattern = vocab.get("pattern", r"[^\W_]+")
    try:
        re.compile(pattern)
    except (re.error, TypeError) as exc:
        raise BundleError(f"{where}.pattern is not a valid regular expression: {exc}") from None
    normalize = vocab.get("normalize")
    if normalize is not None and normalize not in get_args(UnicodeForm):
        raise BundleError(f"{where}.normalize is {normalize!r}; expected a Unicode form or null")
    return TextVectorizer(
        tokens=tuple(tokens), mode=mode, ngram=ngram, pattern=pattern, normalize=normalize
    )


def _load_module(
    root: Path, spec: Mapping[str, Any], hashes: Mapping[str, Any]
) -> torch.jit.ScriptModule:
    path = _checked_file(root, str(spec["file"]), hashes)
    traced_with: dict[str, Any] = {SPEC_DIGEST: ""}  # torch.jit.load fills in the bytes
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=traced_with)
    except RuntimeError as exc:
        raise BundleError(f"{path} is not a loadable TorchScript module: {exc}") from None
    # Bundles exported before the digest existed carry none (b"") and are taken as they are.
    digest = bytes(traced_with[SPEC_DIGEST]).decode("ascii", "replace")
    if digest and digest != spec_digest(spec):
        raise BundleError(
            f"{root / MANIFEST}: the entry for {path.name} is not the one it was exported with "
            "(an input size, normalisation or vocabulary edited by hand would give codes that "
            "match nothing); export the bundle again"
        )
    module.eval()
    return module


def _checked_file(root: Path, name: str, hashes: Mapping[str, Any]) -> Path:
    """A bundle file the manifest lists, present and matching its sha256."""
    path = root / name
    if not path.is_file():
        raise BundleError(f"bundle {root} is missing {name}, which the manifest lists")
    expected = hashes.get(name)
    if not isinstance(expected, str):
        raise BundleError(f"{root / MANIFEST} lists no sha256 for {name} under 'files'")
    actual = file_sha256(path)
    if actual != expected.lower():
        raise BundleError(
            f"sha256 mismatch for {name}: manifest says {expected}, file is {actual}; "
            "the bundle is corrupt or was modified after export"
        )
    return path


def _probe_input(
    modality: str,
    spec: Mapping[str, Any],
    vectorizer: TextPreparer | None,
) -> npt.NDArray[Any]:
    """Fixed pseudo-random inputs: their codes identify the model, not the file bytes."""
    rng = np.random.default_rng(20240601)
    if isinstance(vectorizer, SentenceTokenizer) and modality == "text":
        return vectorizer.vectorize(PROBE_SENTENCES)[0]
    if modality == "text":
        assert isinstance(vectorizer, TextVectorizer)
        return (rng.random((PROBES, len(vectorizer.tokens))) < 0.1).astype(np.float32)
    shape: tuple[int, ...] = (PROBES, 3, spec["size"], spec["size"])
    if modality == "video":
        # What service.media.decode_clip returns, with the batch axis in front.
        shape = (PROBES, spec["clips"], spec["frames"], 3, spec["size"], spec["size"])
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _probe(encoder: Encoder, dummy: npt.NDArray[Any], path: Path) -> npt.NDArray[np.uint8]:
    """Run the probe so a width mismatch fails at start-up, not on the first request."""
    try:
        codes = encoder.encode(dummy)
        if isinstance(encoder, TorchScriptEncoder) and encoder.gives_values:
            if not np.array_equal(encoder.encode_with_values(dummy)[0], codes):
                raise BundleError(
                    f"{encoder.modality} encoder's {VALUES_METHOD} gives other codes than the "
                    "encoder itself; export the bundle again"
                )
        return codes
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None
    except RuntimeError as exc:
        # TorchScript errors carry the scripted call stack; the last line says what failed.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise BundleError(
            f"{path} failed on a probe {encoder.modality} input of shape {dummy.shape}: "
            f"{lines[-1] if lines else type(exc).__name__}"
        ) from None
