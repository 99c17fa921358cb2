"""``index``: files into a Chroma collection, idempotent and resumable, on either engine.

Finds the files, then runs the chosen engine: the single-process one here (with
:mod:`.local`), or Ray's (:mod:`.ray_engine`). Both prepare the store with :mod:`.prepare`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from qwen3_rag.core import Qwen3Embedder

from .documents import SkippedSource, find_sources
from .options import IndexOptions
from .plan import IndexSummary
from .prepare import changed_settings, open_for_index, prepare
from .progress import StopRequest


def index(
    paths: Sequence[str],
    options: IndexOptions | None = None,
    *,
    stop: StopRequest | None = None,
    rebuild_hint: str | None = None,
) -> IndexSummary:
    """Index files into a Chroma collection; run again to resume or to pick up changes.

    Files (.txt, .md, .pdf) are split into chunks whose ids depend only on their source and
    content, so a second run embeds only what changed, removes the chunks of changed or
    deleted files, and a killed run resumes where it stopped. The collection records the
    embedder's settings, and a later run (or query) with other settings is refused.

    Args:
        paths: Files or folders.
        options: The run's settings (default: :class:`IndexOptions` defaults: the embedded
            folder ``./qwen3_rag_db``, the default model, the local engine).
        stop: Call its ``request(reason)`` from another thread (or a signal handler, see
            :func:`~qwen3_rag.indexing.deferred_stop`) to stop after the write in flight.
        rebuild_hint: What a damaged-database error tells the user to run.

    Returns:
        The run's counts (:class:`IndexSummary`).

    Raises:
        IndexingError: For bad input (a path, an option, a store that cannot be used), with
            its subclasses for a damaged or unwritable store.
        ConfigMismatchError: If a setting differs from the collection's.
        ModelLoadError: If the model cannot be loaded.
        Interrupted: When ``stop`` was requested.

    Example:
        >>> from qwen3_rag.indexing import IndexOptions, StoreOptions, index
        >>> options = IndexOptions(StoreOptions(db="./db"), embedding_model="./model")
        >>> index(["./docs"], options).new  # doctest: +SKIP
        42
    """
    options = options or IndexOptions()
    stop = stop or StopRequest()
    started = time.perf_counter()
    files, skipped = find_sources(paths)
    if options.engine == "ray":
        from .ray_engine import index_with_ray_engine

        summary = index_with_ray_engine(paths, files, skipped, options, stop, rebuild_hint)
    else:
        summary = _index_locally(paths, files, skipped, options, stop, rebuild_hint)
    summary.seconds = time.perf_counter() - started
    return summary


def _index_locally(
    paths: Sequence[str],
    files: list[Path],
    skipped: list[SkippedSource],
    options: IndexOptions,
    stop: StopRequest,
    rebuild_hint: str | None,
) -> IndexSummary:
    from .local import index_locally

    with open_for_index(options, rebuild_hint) as store, store.errors():
        prepared = prepare(store, options)
        # The run draws its own progress; the libraries' bars (weight loading) only if verbose.
        embedder = Qwen3Embedder(prepared.model, show_progress=options.verbose, **prepared.embedder)
        collection = store.open_for(embedder)
        summary = index_locally(
            paths, files, skipped, prepared.existing, collection, embedder, options, stop
        )
        summary.changed = changed_settings(
            prepared.previous,
            prepared.model,
            prepared.embedder,
            embedder.hidden_size,
            embedder.instruction,
        )
        summary.collection_count = collection.count()
    return summary
