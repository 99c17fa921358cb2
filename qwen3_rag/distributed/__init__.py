"""Scale-out indexing on Ray Data into a Chroma server.

The same chunks, ids and stale-chunk handling as the single-process indexer; the command is
``qwen3-rag index PATH --engine ray --chroma-url URL`` and :func:`index_with_ray` is the same
from Python.

Example:
    >>> from qwen3_rag.distributed import index_with_ray
    >>> index_with_ray(["./docs"], "http://localhost:8000")  # doctest: +SKIP
    {'files': 12, 'skipped': 0, 'chunks': 340, 'new': 340, ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["index_with_ray"]


def index_with_ray(
    paths: Sequence[str],
    chroma_url: str,
    *,
    collection: str | None = None,
    embedding_model: str | None = None,
    chunk_size: int = 1000,
    chunk_overlap: int = 150,
    ray_address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    batch_size: int | None = None,
    rebuild: bool = False,
    progress: bool = False,
    **embedder_options: Any,
) -> dict[str, Any]:
    """Index files into a Chroma server with Ray, as ``qwen3-rag index --engine ray`` does.

    Args:
        paths: Files or folders (.txt, .md, .pdf), visible at the same paths on every node.
        chroma_url: The Chroma server, e.g. ``"http://localhost:8000"``.
        collection: Collection name (default: the CLI's, ``"qwen3-rag"``).
        embedding_model: Hub id or folder (default: the collection's model, else the default).
        chunk_size: Characters per chunk.
        chunk_overlap: Characters shared by neighbouring chunks.
        ray_address: A cluster to join; None starts a local Ray and stops it at the end.
        workers: Embedding workers (default: GPUs / ``gpus_per_worker``, else 1).
        gpus_per_worker: GPUs per worker (default: 1 where the cluster has GPUs, else 0).
        batch_size: Chunks per embed-and-upsert batch (default 256).
        rebuild: Delete the collection first and index from scratch.
        progress: Show progress lines on stderr.
        **embedder_options: The CLI's embedding options (``max_length``, ``dimensions``,
            ``instruction``, ``dtype``, ...), fields of :class:`~qwen3_rag.core.EmbedderConfig`.

    Returns:
        The counts the CLI prints with ``--json`` (files, chunks, new, unchanged, removed...).

    Raises:
        ValueError: For bad input (a path, an option, an unreachable server or cluster); the
            message names it.
    """
    from qwen3_rag.cli import build_parser
    from qwen3_rag.cli.common import CliError
    from qwen3_rag.cli.index import check_index_options, summary
    from qwen3_rag.distributed.engine import run_ray_index

    argv = ["index", *map(str, paths), "--engine", "ray", "--chroma-url", chroma_url]
    argv += ["--chunk-size", str(chunk_size), "--chunk-overlap", str(chunk_overlap)]
    argv += [] if progress else ["-q"]
    args = build_parser().parse_args(argv)
    for name, value in {
        "collection": collection,
        "embedding_model": embedding_model,
        "ray_address": ray_address,
        "workers": workers,
        "gpus_per_worker": gpus_per_worker,
        "batch_size": batch_size,
    }.items():
        if value is not None:
            setattr(args, name, value)
    args.rebuild = rebuild
    unknown = sorted(set(embedder_options) - set(vars(args)))
    if unknown:
        raise TypeError(f"unknown embedding option(s): {', '.join(unknown)}")
    for name, value in embedder_options.items():
        setattr(args, name, value)
    try:
        check_index_options(args)
        stats, count, seconds = run_ray_index(args)
    except CliError as e:
        raise ValueError(str(e)) from e
    return summary(stats, count, seconds)
