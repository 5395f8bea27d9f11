"""Hamming-distance indexes, the durable code store and collections tying them together."""
