"""The errors the indexing library raises on purpose.

Each is a :class:`~qwen3_rag.core.Qwen3RagError`: the user's to fix, reported in one line. The
CLI maps :class:`StoreDamagedError` and :class:`StoreNotWritableError` to their own exit
statuses and every other one to "bad input"; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from qwen3_rag.core import Qwen3RagError


class IndexingError(Qwen3RagError, ValueError):
    """Bad input to an index, query or prune: a path, an option, a store that cannot be used.

    A ``ValueError`` too, as :func:`qwen3_rag.distributed.index_with_ray` documents.
    """


class StoreError(IndexingError):
    """The vector store cannot be opened or used as asked."""


class StoreInUseError(StoreError):
    """Another process holds the embedded database folder."""


class StoreDamagedError(StoreError):
    """The embedded database's files are damaged; ``--rebuild`` recreates them."""


class StoreNotWritableError(StoreError):
    """The embedded database cannot be written: disk full, a size limit, permissions."""


class Interrupted(Qwen3RagError):
    """A stop was requested (SIGINT, SIGTERM); raised between writes, so finished work is kept."""
