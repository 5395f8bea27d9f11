"""Frozen per-frame feature maps of video clips, cached on disk.

Clips are decoded in worker processes (`model.data.clip_decoding`) while the main process
runs the frozen 2-D trunk over their frames. A cache entry is keyed by the file's
sha256 and lives in one SQLite file per (backbone, frame size, frames, clips), so a renamed
file is a hit and a changed file or another sampling is a miss. Maps are stored as float16:
half the disk and memory, and the exported encoder rounds its maps the same way.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bundle.clips import ClipError
from bundle.digests import file_sha256
from model.backbones.efficientnet import load_pretrained
from model.backbones.video import FrameMaps, clip_map_shape
from model.data.clip_decoding import decode_clips
from model.data.records import DataError
from model.distributed import ALONE, Share
from model.features import others_share
from model.hashing import PixelNormalize

log = logging.getLogger(__name__)


class MapCache:
    """Persistent map from content digest to a float16 array of a fixed size."""

    def __init__(self, path: Path, size: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.size = size
        # Processes of a distributed run write their shares into one cache: wait for the lock.
        self.db = sqlite3.connect(path, timeout=120)
        self.db.execute("CREATE TABLE IF NOT EXISTS maps (digest TEXT PRIMARY KEY, maps BLOB)")

    def get(self, digests: Sequence[str]) -> dict[str, np.ndarray]:
        """The cached arrays among `digests` (entries of the wrong size are ignored)."""
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(digests), 500):
            chunk = list(digests[start : start + 500])
            marks = ",".join("?" * len(chunk))
            query = f"SELECT digest, maps FROM maps WHERE digest IN ({marks})"
            rows = self.db.execute(query, chunk)
            for digest, blob in rows:
                array = np.frombuffer(blob, dtype=np.float16)
                if array.size == self.size:
                    found[digest] = array
        return found

    def put(self, items: dict[str, np.ndarray]) -> None:
        """Store arrays in one transaction."""
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO maps VALUES (?, ?)",
                [(k, v.astype(np.float16).tobytes()) for k, v in items.items()],
            )

    def close(self) -> None:
        self.db.close()


def _decoded(
    paths: Sequence[Path], frames: int, size: int, clips: int, workers: int
) -> Iterator[np.ndarray]:
    """Decoded clips in order (worker processes); a file that fails stops with a DataError."""
    for path, result in decode_clips(paths, frames=frames, size=size, clips=clips, workers=workers):
        if isinstance(result, ClipError):
            raise DataError(f"cannot decode this clip: {result}", path=path)
        yield result


def extract_clip_maps(
    paths: Sequence[Path],
    *,
    backbone: str,
    size: int,
    frames: int,
    clips: int,
    cache_dir: Path,
    workers: int = 2,
    batch_videos: int = 8,
    share: Share = ALONE,
) -> np.ndarray:
    """Flattened per-frame maps (n, clips*frames*C*h*w) float16, computing only cache misses
    (with `share`, this process's share of them; see model.features.extract_image_features)."""
    shape = clip_map_shape(backbone, size, frames, clips)
    name = f"{backbone}-{size}px-{frames}f-{clips}c-maps.sqlite"
    cache = MapCache(Path(cache_dir) / name, int(np.prod(shape)))
    with ThreadPoolExecutor(max_workers=4) as pool:
        digests = list(pool.map(file_sha256, paths))
    known = cache.get(sorted(set(digests)))
    missing = sorted({d: p for d, p in zip(digests, paths, strict=True) if d not in known}.items())
    share.wait()  # every process has read the cache: each sees the same `missing`
    mine = share.of(missing)
    if mine:
        log.info("extracting %s maps for %d clips (%d cached)", backbone, len(mine), len(known))
        trunk = load_pretrained(backbone)
        norm = PixelNormalize(trunk.spec.mean, trunk.spec.std)
        net = FrameMaps(trunk).to(memory_format=torch.channels_last)
        decoded = _decoded([p for _, p in mine], frames, size, clips, workers)
        with tqdm(total=len(mine), desc="clip maps") as bar:
            for start in range(0, len(mine), batch_videos):
                chunk = mine[start : start + batch_videos]
                pixels = np.stack([next(decoded) for _ in chunk])
                batch = {
                    d: m for (d, _), m in zip(chunk, clip_maps(net, norm, pixels), strict=True)
                }
                cache.put(batch)
                known.update(batch)
                bar.update(len(chunk))
    share.wait()  # every share is in the cache
    known.update(cache.get(others_share(missing, mine)))
    cache.close()
    return np.stack([known[d] for d in digests])


def clip_maps(net: torch.nn.Module, norm: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    """uint8 (n, clips, frames, 3, s, s) -> flattened float16 maps (n, clips*frames*C*h*w)."""
    n, s = pixels.shape[0], pixels.shape[-1]
    x = norm(torch.from_numpy(pixels).reshape(-1, 3, s, s))
    with torch.inference_mode():
        maps = net(x.contiguous(memory_format=torch.channels_last))
    return maps.reshape(n, -1).to(torch.float16).numpy()


def channel_statistics(
    maps: np.ndarray, rows: np.ndarray, shape: tuple[int, ...], chunk: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over `rows` of maps flattened from (clips, frames, C, h, w)."""
    channels = shape[2]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for start in range(0, len(rows), chunk):
        block = maps[rows[start : start + chunk]].astype(np.float64)
        block = block.reshape(-1, channels, shape[3] * shape[4]).transpose(1, 0, 2)
        total += block.sum(axis=(1, 2))
        squares += (block**2).sum(axis=(1, 2))
        count += block.shape[1] * block.shape[2]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(squares / max(count, 1) - mean**2, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()
