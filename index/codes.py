"""Packing, unpacking, validation and hex conversion of binary hash codes.

Codes of ``bits`` bits are packed MSB-first (``np.packbits(..., axis=1)``) into
``uint8`` arrays of shape ``(n, bits // 8)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from bundle.widths import MAX_BITS, MIN_BITS
from index.errors import CodeError

__all__ = [
    "MAX_BITS",
    "MIN_BITS",
    "CodeError",
    "check_bits",
    "codes_from_hex",
    "codes_to_hex",
    "hamming",
    "pack_signs",
    "unpack_codes",
    "validate_codes",
]

_HEX = re.compile(r"[0-9a-fA-F]*")
#: Number of set bits of every byte value; Hamming distance is the popcount of a xor.
POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def check_bits(bits: int) -> int:
    """Return ``bits`` if it is a supported code width, else raise CodeError."""
    if (
        isinstance(bits, bool)
        or not isinstance(bits, int | np.integer)
        or not MIN_BITS <= bits <= MAX_BITS
        or bits % 8
    ):
        raise CodeError(
            f"bits must be a multiple of 8 between {MIN_BITS} and {MAX_BITS}, got {bits!r}"
        )
    return int(bits)


def pack_signs(x: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Pack a 2-D float or +/-1 array into MSB-first uint8 codes (x > 0 is bit 1)."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise CodeError(f"expected a 2-D (n, bits) array of signs, got shape {arr.shape}")
    check_bits(arr.shape[1])
    return np.packbits(arr > 0, axis=1)


def unpack_codes(codes: npt.ArrayLike, bits: int) -> npt.NDArray[np.int8]:
    """Unpack uint8 codes into a (n, bits) int8 array of +1/-1."""
    packed = validate_codes(codes, bits)
    unpacked = np.unpackbits(packed, axis=1).astype(np.int8)
    return unpacked * 2 - 1


def validate_codes(codes: npt.ArrayLike, bits: int) -> npt.NDArray[np.uint8]:
    """Return ``codes`` as a C-contiguous (n, bits // 8) uint8 array or raise CodeError."""
    check_bits(bits)
    arr = np.asarray(codes)
    if arr.dtype != np.uint8:
        raise CodeError(f"codes must have dtype uint8 (packed bits), got {arr.dtype}")
    if arr.ndim != 2:
        raise CodeError(f"codes must be 2-D (n, {bits // 8}), got shape {arr.shape}")
    if arr.shape[1] != bits // 8:
        raise CodeError(
            f"codes must be {bits // 8} bytes wide for {bits}-bit codes, "
            f"got {arr.shape[1]} bytes per row"
        )
    return np.ascontiguousarray(arr)


def codes_from_hex(strings: Sequence[str], bits: int) -> npt.NDArray[np.uint8]:
    """Parse one hex string of length bits/4 per item into packed uint8 codes."""
    check_bits(bits)
    width = bits // 4
    out = np.empty((len(strings), bits // 8), dtype=np.uint8)
    for i, s in enumerate(strings):
        if not isinstance(s, str) or len(s) != width:
            raise CodeError(
                f"code #{i} must be a {width}-character hex string for {bits}-bit codes, got {s!r}"
            )
        # bytes.fromhex skips whitespace, so "ab      " would read as one byte, broadcast.
        if not _HEX.fullmatch(s):
            raise CodeError(f"code #{i} is not valid hex: {s!r}")
        out[i] = np.frombuffer(bytes.fromhex(s), dtype=np.uint8)
    return out


def codes_to_hex(codes: npt.ArrayLike) -> list[str]:
    """Format packed uint8 codes as lowercase hex strings, one per row."""
    arr = np.asarray(codes)
    if arr.ndim != 2 or arr.dtype != np.uint8:
        raise CodeError(
            f"codes must be a 2-D uint8 array, got dtype {arr.dtype} and shape {arr.shape}"
        )
    return [row.tobytes().hex() for row in arr]


def hamming(codes: npt.NDArray[np.uint8], query: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
    """Hamming distance of each packed code (n, bytes) to one packed query (bytes,)."""
    return POPCOUNT[codes ^ query].sum(axis=-1, dtype=np.int64)
