"""Hashing methods: the contract (base), the registry, their config sections and the methods."""
