"""Frozen-backbone image features, cached on disk.

A cache entry is keyed by the file's content (sha256), the backbone and the input size, so a
renamed file is a hit and a changed file is a miss. Entries live in one SQLite file per
(backbone, size, view), which commits atomically and survives interrupted runs.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from bundle.digests import file_sha256
from model.backbones.efficientnet import TrunkFront, load_pretrained
from model.data.images import load_image
from model.distributed import ALONE, Share
from model.hashing import PixelNormalize

log = logging.getLogger(__name__)


class FeatureCache:
    """Persistent map from content digest to a float32 feature vector."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Processes of a distributed run write their shares into one cache: wait for the lock.
        self.db = sqlite3.connect(path, timeout=120)
        self.db.execute("CREATE TABLE IF NOT EXISTS features (digest TEXT PRIMARY KEY, vec BLOB)")

    def get_many(self, digests: Sequence[str]) -> dict[str, np.ndarray]:
        """Return the cached vectors among `digests`."""
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(digests), 500):
            chunk = list(digests[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT digest, vec FROM features WHERE digest IN ({marks})", chunk
            )
            for digest, blob in rows:
                found[digest] = np.frombuffer(blob, dtype=np.float32)
        return found

    def put_many(self, items: dict[str, np.ndarray]) -> None:
        """Store vectors in one transaction."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO features VALUES (?, ?)",
                [(k, v.astype(np.float32).tobytes()) for k, v in items.items()],
            )

    def close(self) -> None:
        self.db.close()


def extract_image_features(
    paths: Sequence[Path],
    *,
    backbone: str,
    size: int,
    cache_dir: Path,
    batch_size: int = 64,
    flip: bool = False,
    tail_blocks: int = 0,
    share: Share = ALONE,
) -> np.ndarray:
    """Pooled backbone features for every path, computing only what the cache lacks.

    With `share`, the processes of a distributed run each compute their share of what is
    missing, into the one cache. With `flip`, features of the mirrored image are averaged in
    (a cheap test-time augmentation).
    With `tail_blocks`, the result is instead the flattened feature map entering the last
    `tail_blocks` blocks, which are then fine-tuned.
    """
    if flip and tail_blocks:
        raise ValueError("flip-averaged features cannot be combined with fine-tuning tail blocks")
    view = f"front{tail_blocks}" if tail_blocks else ("flipavg" if flip else "plain")
    cache = FeatureCache(Path(cache_dir) / f"{backbone}-{size}-{view}.sqlite")
    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(file_sha256, paths))
    known = cache.get_many(sorted(set(digests)))
    missing = sorted({d: p for d, p in zip(digests, paths, strict=True) if d not in known}.items())
    share.wait()  # every process has read the cache: each sees the same `missing`
    mine = share.of(missing)
    if mine:
        log.info(
            "extracting %s features for %d images (%d cached)", backbone, len(mine), len(known)
        )
        trunk = load_pretrained(backbone)
        norm = PixelNormalize(trunk.spec.mean, trunk.spec.std)
        net: torch.nn.Module = TrunkFront(trunk, tail_blocks) if tail_blocks else trunk
        net = net.to(memory_format=torch.channels_last)
        with (
            ThreadPoolExecutor(max_workers=2) as pool,
            tqdm(total=len(mine), desc="features") as bar,
        ):
            for start in range(0, len(mine), batch_size):
                chunk = mine[start : start + batch_size]
                pixels = np.stack(list(pool.map(lambda item: load_image(item[1], size), chunk)))
                x = norm(torch.from_numpy(pixels)).contiguous(memory_format=torch.channels_last)
                with torch.inference_mode():
                    feats = net(x)
                    if flip:
                        feats = (feats + net(torch.flip(x, dims=[-1]))) / 2
                batch = {d: f for (d, _), f in zip(chunk, feats.numpy(), strict=True)}
                cache.put_many(batch)
                known.update(batch)
                bar.update(len(chunk))
    share.wait()  # every share is in the cache
    known.update(cache.get_many(others_share(missing, mine)))
    cache.close()
    return np.stack([known[d] for d in digests]).astype(np.float32)


def others_share(missing: list[tuple[str, Any]], mine: list[tuple[str, Any]]) -> list[str]:
    """The digests the other processes computed: what was missing, less this one's share."""
    if len(mine) == len(missing):
        return []
    done = {d for d, _ in mine}
    return [d for d, _ in missing if d not in done]
