"""Exceptions raised for bad input.

Every error a user can cause derives from :class:`CompNNError`; the command line and the HTTP
service print its message (which names the file, layer or option at fault) instead of a
traceback. They also derive from the matching built-in type so callers can catch ``ValueError``.
"""


class CompNNError(Exception):
    """Base class: a clear, user-facing error."""


class DataError(CompNNError, ValueError):
    """A dataset file or folder is missing, unreadable or not what was expected."""


class ModelError(CompNNError, ValueError):
    """A checkpoint, architecture option or layer name is wrong."""


class IndexStoreError(CompNNError, ValueError):
    """An index store is missing, incomplete, or does not match the model."""


class QueryError(CompNNError, ValueError):
    """A query's options (layer, top_k, restrict, ids, image) are invalid."""


class DistributedError(CompNNError, RuntimeError):
    """Ray is missing or unreachable, or a shard could not answer (the message names it).

    Defined here, below every layer, so the service can answer it (503: the shard may be back
    shortly) without importing :mod:`compnn_index.distributed`.
    """
