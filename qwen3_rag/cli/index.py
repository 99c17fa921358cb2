"""``qwen3-rag index``, ``query`` and ``prune``: parse, call :mod:`qwen3_rag.indexing`, print."""

from __future__ import annotations

import argparse
import json
from typing import Any

from qwen3_rag.cli.common import (
    EXIT_OK,
    SHARED_OPTIONS,
    CliError,
    add_chunk_flags,
    add_config_flags,
    add_output_flags,
    add_store_flags,
    check_options,
    deferred_stop,
    given_options,
    model_hint,
    model_reference,
    out,
    rebuild_hint,
    require,
    store_options,
)
from qwen3_rag.core import (
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_RERANKER_MODEL,
    EmbedderConfig,
    Qwen3Reranker,
    RerankerConfig,
)
from qwen3_rag.indexing import DEFAULT_K, DEFAULT_TOP_N
from qwen3_rag.indexing.options import ENGINES, RAY_SETTINGS


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


# -- index -----------------------------------------------------------------------------------
def cmd_index(args: argparse.Namespace) -> int:
    """Index files into the collection; idempotent and resumable."""
    from qwen3_rag.indexing import IndexingError, IndexOptions, index

    require("chromadb", "langchain_text_splitters", "pypdf")
    embedder = given_options(args, EmbedderConfig)
    check_options(EmbedderConfig, embedder)
    store = store_options(args)
    given = [_flag(n) for n in RAY_SETTINGS if getattr(args, n) is not None]
    if args.engine == "local" and given:
        raise CliError(f"{', '.join(given)} need(s) --engine ray")
    try:
        options = IndexOptions(
            store,
            chunk_size=args.chunk_size,
            chunk_overlap=args.chunk_overlap,
            embedding_model=args.embedding_model,
            embedder=embedder,
            rebuild=args.rebuild,
            engine=args.engine,
            progress=not args.quiet,
            verbose=args.verbose,
            **{n: getattr(args, n) for n in RAY_SETTINGS},
        )
    except IndexingError as e:
        raise CliError(_as_flags(str(e))) from e
    # From here on SIGINT/SIGTERM stop the run at the next safe point (between writes).
    with deferred_stop() as stop, model_hint("--embedding-model", "EMBED_MODEL"):
        hint = rebuild_hint(args.paths, store)
        summary = index(args.paths, options, stop=stop, rebuild_hint=hint)
    if args.json:
        out(json.dumps(summary.as_dict(), ensure_ascii=False))
        return EXIT_OK
    out(
        f"indexed {summary.files} files ({summary.skipped} skipped): {summary.chunks} chunks, "
        f"{summary.new} new, {summary.unchanged} unchanged, {summary.removed} removed "
        f"in {summary.seconds:.1f}s -> collection {store.collection!r} "
        f"({summary.collection_count} chunks)"
    )
    if summary.changed:
        changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in summary.changed.items())
        out(f"rebuilt with new settings: {changes}")
    return EXIT_OK


def _as_flags(message: str) -> str:
    """A library message about option names, with the CLI's flag names."""
    for name in ("chunk_overlap", "chunk_size", "chroma_url", *RAY_SETTINGS):
        message = message.replace(name, _flag(name))
    return message


# -- prune -----------------------------------------------------------------------------------
def cmd_prune(args: argparse.Namespace) -> int:
    """Remove chunks whose source file no longer exists; no model is loaded."""
    from qwen3_rag.indexing import prune

    require("chromadb")
    store = store_options(args)
    summary = prune(store, rebuild_hint=rebuild_hint(None, store))
    if args.json:
        out(json.dumps(summary.as_dict()))
        return EXIT_OK
    for source in summary.removed_sources:
        out(f"removed {summary.by_source[source]} chunks of {source}")
    out(
        f"pruned {summary.removed} chunks of {len(summary.removed_sources)} missing files -> "
        f"collection {store.collection!r} ({summary.collection_count} chunks)"
    )
    return EXIT_OK


# -- query -----------------------------------------------------------------------------------
def cmd_query(args: argparse.Namespace) -> int:
    """Vector search, rerank, print the best sources."""
    from qwen3_rag.indexing import collection_embedder, open_store, rerank_hits, search

    require("chromadb")
    if args.k < 1 or args.top_n < 1:
        raise CliError("--k and --top-n must be positive")
    reranker_options = given_options(args, RerankerConfig)
    check_options(RerankerConfig, reranker_options)
    runtime = {k: getattr(args, k) for k in SHARED_OPTIONS if getattr(args, k) is not None}
    store = store_options(args)
    with open_store(store, write=False, rebuild_hint=rebuild_hint(None, store)) as opened:
        with model_hint("--embedding-model", "EMBED_MODEL"):
            embedder = collection_embedder(opened, args.embedding_model, runtime)
        hits = search(args.question, opened, k=args.k, embedder=embedder)
    with model_hint("--reranker-model", "RERANK_MODEL"):
        reranker = Qwen3Reranker(
            model_reference(args.reranker_model), show_progress=False, **reranker_options
        )
    ranked = rerank_hits(reranker, args.question, hits, top_n=args.top_n)
    results = [hit.as_dict() for hit in ranked]
    if args.json:
        out(json.dumps({"query": args.question, "results": results}, ensure_ascii=False, indent=2))
        return EXIT_OK
    out(f"query: {args.question}")
    out(f"{'#':>2}  {'score':>6}  source")
    for r in results:
        where = f"{r['source']}" + (f" (page {r['page']})" if r.get("page") else "")
        snippet = " ".join(str(r["text"]).split())
        if len(snippet) > 160:
            snippet = snippet[:157] + "..."
        out(f"{r['rank']:>2}  {r['score']:.4f}  {where}")
        out(f"    {snippet}")
    return EXIT_OK


def _store_and_output_flags(parser: argparse.ArgumentParser) -> None:
    add_store_flags(parser)
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_output_flags(parser)


def register(sub: Any) -> None:
    """Add ``index``, ``query`` and ``prune`` to the ``qwen3-rag`` subcommands."""
    index = sub.add_parser("index", help="index .txt, .md and .pdf files")
    index.add_argument(
        "paths", nargs="+", help="files or folders (links to folders are not followed)"
    )
    add_chunk_flags(index)
    index.add_argument(
        "--rebuild",
        action="store_true",
        help="delete the collection (or move a damaged database aside) and index from scratch, "
        "keeping the stored settings not given again",
    )
    index.add_argument(
        "--embedding-model",
        default=None,
        help="hub id or local folder (default: the collection's model, else "
        f"{DEFAULT_EMBEDDING_MODEL})",
    )
    _store_and_output_flags(index)
    add_config_flags(index.add_argument_group("embedding model options"), EmbedderConfig)
    ray = index.add_argument_group(
        "scale-out (Ray Data; needs a Chroma server, --chroma-url, and pip install "
        '"qwen3-rag[ray]")'
    )
    ray.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process reads, embeds and writes; ray: a Ray Data pipeline with a "
        "pool of embedding workers (default: local)",
    )
    ray.add_argument(
        "--ray-address",
        default=None,
        help="join this Ray cluster (auto, HOST:PORT or ray://HOST:10001); default: start a "
        "local Ray sized to this machine and stop it at the end",
    )
    ray.add_argument(
        "--workers",
        type=int,
        default=None,
        help="embedding workers, each holding one model (default: the GPUs / "
        "--gpus-per-worker, else 1)",
    )
    ray.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPUs each worker reserves; 0.5 puts two workers on a GPU (default: 1 where the "
        "cluster has GPUs, else 0: CPU workers)",
    )
    ray.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="chunks per embed-and-upsert batch; a killed worker redoes at most one (default: 256)",
    )
    index.set_defaults(func=cmd_index)

    query = sub.add_parser("query", help="ask a question, get reranked sources")
    query.add_argument("question")
    query.add_argument(
        "--k", type=int, default=DEFAULT_K, help=f"vector-search candidates (default: {DEFAULT_K})"
    )
    query.add_argument(
        "--top-n",
        type=int,
        default=DEFAULT_TOP_N,
        help=f"results after reranking (default: {DEFAULT_TOP_N})",
    )
    query.add_argument(
        "--embedding-model",
        default=None,
        help="must match the collection's (default: the collection's model)",
    )
    query.add_argument(
        "--reranker-model",
        default=DEFAULT_RERANKER_MODEL,
        help=f"hub id or local folder (default: {DEFAULT_RERANKER_MODEL})",
    )
    _store_and_output_flags(query)
    add_config_flags(
        query.add_argument_group(
            "reranker options (the runtime ones, such as --device, apply to the embedder "
            "too; it takes the rest from the collection)"
        ),
        RerankerConfig,
    )
    query.set_defaults(func=cmd_query)

    prune = sub.add_parser("prune", help="remove chunks whose source file no longer exists")
    _store_and_output_flags(prune)
    prune.set_defaults(func=cmd_prune)
