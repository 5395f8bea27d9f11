"""The hashbridge HTTP service: encoders loaded from a bundle in front of a Hamming collection."""
