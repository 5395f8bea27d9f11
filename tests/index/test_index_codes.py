"""Tests for index.codes: packing, validation and hex conversion."""

import numpy as np
import pytest

from index.codes import (
    CodeError,
    check_bits,
    codes_from_hex,
    codes_to_hex,
    pack_signs,
    unpack_codes,
    validate_codes,
)


def test_pack_signs_is_msb_first_and_positive_is_one():
    signs = np.array([[1, -1, -1, -1, -1, -1, -1, 1] + [-1] * 7 + [1]], dtype=np.float32)
    assert pack_signs(signs).tolist() == [[0x81, 0x01]]
    # Zero is not positive, so it packs to bit 0.
    assert pack_signs(np.zeros((1, 8))).tolist() == [[0]]
    assert pack_signs(np.array([[0.3, -2, 5, 0, 0, 0, 0, 0]])).tolist() == [[0b10100000]]


@pytest.mark.parametrize("bits", [8, 64, 128])
def test_pack_unpack_round_trip(bits):
    rng = np.random.default_rng(bits)
    signs = rng.choice(np.array([-1, 1], dtype=np.int8), size=(37, bits))
    packed = pack_signs(signs)
    assert packed.dtype == np.uint8 and packed.shape == (37, bits // 8)
    unpacked = unpack_codes(packed, bits)
    assert unpacked.dtype == np.int8
    np.testing.assert_array_equal(unpacked, signs)


def test_pack_signs_rejects_bad_shapes():
    with pytest.raises(CodeError, match="2-D"):
        pack_signs(np.ones(16))
    with pytest.raises(CodeError, match="multiple of 8"):
        pack_signs(np.ones((2, 12)))


@pytest.mark.parametrize("bad", [0, 4, 12, 136, 256, True, 16.0])
def test_check_bits_rejects_unsupported_widths(bad):
    with pytest.raises(CodeError, match="multiple of 8 between 8 and 128"):
        check_bits(bad)


def test_validate_codes_messages_say_what_is_wrong():
    good = np.zeros((3, 8), dtype=np.uint8)
    assert validate_codes(good, 64) is not None
    with pytest.raises(CodeError, match="dtype uint8.*float64"):
        validate_codes(good.astype(np.float64), 64)
    with pytest.raises(CodeError, match="2-D"):
        validate_codes(good.ravel(), 64)
    with pytest.raises(CodeError, match="8 bytes wide for 64-bit codes, got 4"):
        validate_codes(np.zeros((3, 4), dtype=np.uint8), 64)
    assert issubclass(CodeError, ValueError)


def test_validate_codes_returns_contiguous_copy_of_strided_input():
    base = np.arange(48, dtype=np.uint8).reshape(3, 16)
    out = validate_codes(base[:, ::2], 64)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, base[:, ::2])


def test_hex_round_trip_and_known_value():
    assert codes_to_hex(np.array([[0x80, 0xFF]], dtype=np.uint8)) == ["80ff"]
    np.testing.assert_array_equal(codes_from_hex(["80ff", "0001"], 16), [[0x80, 0xFF], [0, 1]])
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(20, 16), dtype=np.uint8)
    strings = codes_to_hex(codes)
    assert all(len(s) == 32 for s in strings)
    np.testing.assert_array_equal(codes_from_hex(strings, 128), codes)
    assert codes_from_hex(["ABCD"], 16).tolist() == [[0xAB, 0xCD]]


def test_codes_from_hex_names_the_bad_entry():
    with pytest.raises(CodeError, match=r"code #1 must be a 4-character hex string.*'abc'"):
        codes_from_hex(["abcd", "abc"], 16)
    with pytest.raises(CodeError, match=r"code #2 is not valid hex: 'zz00'"):
        codes_from_hex(["abcd", "0000", "zz00"], 16)
    with pytest.raises(CodeError, match="code #0"):
        codes_from_hex([1234], 16)  # type: ignore[list-item]
    assert codes_from_hex([], 16).shape == (0, 2)


@pytest.mark.parametrize("padded", ["ab  ", "  ab", "a b ", "ab\t\t", "ab\n "])
def test_codes_from_hex_refuses_whitespace(padded: str) -> None:
    # bytes.fromhex skips whitespace: "ab  " would be one byte, broadcast into "abab".
    with pytest.raises(CodeError, match="is not valid hex"):
        codes_from_hex([padded], 16)


def test_codes_to_hex_rejects_unpacked_input():
    with pytest.raises(CodeError, match="2-D uint8"):
        codes_to_hex(np.zeros((2, 2), dtype=np.int64))
