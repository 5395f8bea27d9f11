"""Frozen sentence-encoder embeddings of texts, cached on disk.

A cache entry is keyed by the text's sha256; entries live in one SQLite file per (model,
max length), since truncation changes the embedding. Texts are embedded in batches of
similar token length, padded only to the batch's longest: masked padding does not change a
sentence's embedding, and this is several times faster than padding every caption to the
maximum length.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bundle.sentence import SentenceTokenizer
from model.backbones.minilm import EMBEDDING_DIM, MODEL_NAME, load_minilm, tokenizer_path
from model.distributed import ALONE, Share
from model.features import FeatureCache, others_share

log = logging.getLogger(__name__)

#: text.encoder values that use a pretrained sentence encoder, and the model each names.
SENTENCE_ENCODERS = {"minilm": MODEL_NAME}


def text_digest(text: str) -> str:
    """sha256 of a text's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def extract_sentence_features(
    texts: Sequence[str],
    *,
    encoder: str,
    max_length: int,
    cache_dir: Path,
    batch_size: int = 64,
    share: Share = ALONE,
) -> np.ndarray:
    """Unit-length sentence embeddings (n, 384) float32, computing only what the cache lacks
    (with `share`, this process's share of it; see model.features.extract_image_features)."""
    if encoder not in SENTENCE_ENCODERS:
        raise ValueError(f"unknown sentence encoder {encoder!r}; use {sorted(SENTENCE_ENCODERS)}")
    if not texts:
        return np.zeros((0, EMBEDDING_DIM), dtype=np.float32)
    name = SENTENCE_ENCODERS[encoder]
    cache = FeatureCache(Path(cache_dir) / f"{name}-len{max_length}.sqlite")
    digests = [text_digest(t) for t in texts]
    known = cache.get_many(sorted(set(digests)))
    missing = sorted({d: t for d, t in zip(digests, texts, strict=True) if d not in known}.items())
    share.wait()  # every process has read the cache: each sees the same `missing`
    mine = share.of(missing)
    if mine:
        log.info("embedding %d texts with %s (%d cached)", len(mine), name, len(known))
        model = load_minilm()
        tokens = SentenceTokenizer(tokenizer_path(), max_length)
        lengths = tokens.lengths([t for _, t in mine])
        order = np.argsort(lengths, kind="stable")
        with tqdm(total=len(mine), desc="sentences") as bar:
            for start in range(0, len(order), batch_size):
                chunk = [mine[i] for i in order[start : start + batch_size]]
                longest = max(lengths[i] for i in order[start : start + batch_size])
                ids, mask = tokens.encode([t for _, t in chunk], pad_to=longest)
                with torch.inference_mode():
                    vectors = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
                batch = {d: v for (d, _), v in zip(chunk, vectors, strict=True)}
                cache.put_many(batch)
                known.update(batch)
                bar.update(len(chunk))
    share.wait()  # every share is in the cache
    known.update(cache.get_many(others_share(missing, mine)))
    cache.close()
    return np.stack([known[d] for d in digests]).astype(np.float32)
