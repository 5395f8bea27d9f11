"""Code widths every layer agrees on: what the Hamming index holds, so what a bundle may emit."""

MIN_BITS = 8
MAX_BITS = 128
