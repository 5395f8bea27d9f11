"""Typed errors raised by the index package; the service maps them to HTTP."""


class CodeError(ValueError):
    """A hash code array or string is malformed (dtype, shape, width, hex)."""


class BitsMismatchError(ValueError):
    """An index file or store holds codes of a different bit width than requested."""


class IndexFileError(ValueError):
    """An index file is missing, truncated, corrupt or of an unknown format."""


class ItemError(ValueError):
    """An item handed to the store is invalid (modality, client_id, metadata)."""


class BackendUnavailable(RuntimeError):
    """The index backend (a Milvus server) cannot be reached or did not answer in time."""


class CollectionMismatch(ValueError):
    """A shared collection was made by another program, or holds another model's codes."""


class IndexKindMismatch(CollectionMismatch):
    """A shared collection is indexed otherwise than the settings say (kind or nlist)."""
