"""The one error a bundle that does not follow the format raises."""

from __future__ import annotations


class BundleFormatError(ValueError):
    """A bundle folder or manifest that breaks the format; the message says what to fix."""
