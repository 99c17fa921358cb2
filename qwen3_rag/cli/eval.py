"""``qwen3-rag eval``: retrieval quality of embedders, rerankers and baselines on your data."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from qwen3_rag.cli.common import (
    EXIT_OK,
    CliError,
    add_config_flags,
    add_output_flags,
    check_options,
    given_options,
    logger,
    model_reference,
    out,
)
from qwen3_rag.core import DEFAULT_EMBEDDING_MODEL, RuntimeConfig

#: Where corpus vectors are kept between runs unless ``--eval-cache`` says otherwise.
DEFAULT_EVAL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "qwen3-rag" / "eval"
EVAL_INSTALL = 'pip install "qwen3-rag[eval]"'
#: DATA naming the built-in code-search set (qwen3_rag.eval.stdlib), optionally ``stdlib:a,b``.
STDLIB = "stdlib"


def _require_eval() -> None:
    import importlib

    for name in ("ir_measures", "bm25s"):
        try:
            importlib.import_module(name)
        except ImportError as e:
            raise CliError(f"{name} is not installed; qwen3-rag eval needs: {EVAL_INSTALL}") from e


def _dimensions(text: str) -> list[int | None]:
    values: list[int | None] = []
    for part in text.split(","):
        part = part.strip()
        if part in ("", "full", "none"):
            values.append(None)
            continue
        try:
            values.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--dimensions takes a comma list of integers (or 'full'), got {part!r}"
            ) from None
    return values


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _safe_name(name: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_")[:80] or "run"
    candidate, n = stem, 2
    while candidate in taken:
        candidate, n = f"{stem}-{n}", n + 1
    taken.add(candidate)
    return candidate


def format_table(rows: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    """The result table: one row per run, the best value of each column marked with ``*``."""
    best = {
        m: max((r["metrics"][m] for r in rows if not math.isnan(r["metrics"][m])), default=None)
        for m in metrics
    }
    header = ["run", *metrics, "seconds"]
    body = []
    for r in rows:
        cells = [r["name"]]
        for m in metrics:
            value = r["metrics"][m]
            mark = "*" if best[m] is not None and value == best[m] and len(rows) > 1 else " "
            cells.append(f"{value:.4f}{mark}")
        cells.append(f"{r['seconds']:.1f}")
        body.append(cells)
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    lines = [fmt(header), fmt(["-" * w for w in widths])]
    lines += [fmt(cells) for cells in body]
    if len(rows) > 1:
        lines.append("* best value in its column")
    return lines


def _collection_run(args: argparse.Namespace, dataset: Any, progress: bool) -> tuple[Any, str, Any]:
    """Search an indexed Chroma collection: (run, row name, texts of the returned documents)."""
    from qwen3_rag.cli.common import require
    from qwen3_rag.cli.store import (
        db_path,
        embedder_for_query,
        open_client,
        open_collection_with,
        storage_errors,
        stored_config,
    )
    from qwen3_rag.eval.evaluate import model_label
    from qwen3_rag.eval.runs import RUN_DEPTH

    require("chromadb")
    hint = "run `qwen3-rag index` again"
    client = open_client(args, write=False, rebuild_hint=hint)
    with storage_errors(db_path(args), hint):
        stored = stored_config(client, args.collection)
        if stored is None:
            raise CliError(f"collection {args.collection!r} does not exist")
        embedder = embedder_for_query(args, stored)
        collection = open_collection_with(client, args.collection, embedder)
        count = collection.count()
        if count == 0:
            raise CliError(f"collection {args.collection!r} is empty")
        query_ids = list(dataset.queries)
        vectors = embedder.embed_queries([dataset.queries[q] for q in query_ids])
        run: dict[str, dict[str, float]] = {}
        texts: dict[str, str] = {}
        unknown: set[str] = set()
        from tqdm.auto import tqdm

        for start in tqdm(
            range(0, len(query_ids), 64), desc="search", unit="batch", disable=not progress
        ):
            hits = collection.query(
                query_embeddings=vectors[start : start + 64],
                n_results=min(RUN_DEPTH, count),
                include=["documents", "metadatas", "distances"],
            )
            for row, qid in enumerate(query_ids[start : start + 64]):
                docs: dict[str, float] = {}
                for rid, meta, doc, dist in zip(
                    hits["ids"][row],
                    hits["metadatas"][row],
                    hits["documents"][row],
                    hits["distances"][row],
                    strict=True,
                ):
                    key = str((meta or {}).get(args.id_field, "")) if args.id_field else rid
                    if key not in dataset.corpus:
                        unknown.add(key)
                    # Cosine distance (qwen3-rag's collections) -> similarity; in any space
                    # the order, all that the metrics read, is the collection's own.
                    score = 1.0 - float(dist)
                    if score > docs.get(key, -math.inf):  # several chunks of one document
                        docs[key] = score
                        # The reranker sees this chunk (the last best one any query found).
                        texts[key] = doc or ""
                run[qid] = docs
    if unknown and len(unknown) == len({k for d in run.values() for k in d}):
        how = f"metadata field {args.id_field!r}" if args.id_field else "record ids"
        raise CliError(
            f"none of the ids the collection {args.collection!r} returned ({how}, e.g. "
            f"{sorted(unknown)[0]!r}) is a document id of the dataset; name the metadata field "
            "that holds them with --id-field"
        )
    name = f"{model_label(embedder.model_name)} (collection {args.collection})"
    return run, name, texts


def _load(args: argparse.Namespace) -> Any:
    """The dataset DATA names: a BEIR folder, a QA file, or ``stdlib[:module,...]``."""
    from qwen3_rag.eval import build_stdlib_dataset, load_dataset

    data = str(args.data)
    if not Path(data).exists() and (data == STDLIB or data.startswith(STDLIB + ":")):
        modules = [m.strip() for m in data[len(STDLIB) + 1 :].split(",") if m.strip()]
        return build_stdlib_dataset(modules=modules or None)
    return load_dataset(
        data, split=args.split, question=args.question_field, answer=args.answer_field
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """Load the data, make every requested run, print and write the results."""
    _require_eval()
    from qwen3_rag.eval import DataError, evaluate, parse_metrics, write_beir, write_trec_run

    try:
        metrics = list(parse_metrics(args.metrics))
    except ValueError as e:
        raise CliError(str(e)) from e
    if args.collection is not None and (args.instructions or args.dimensions):
        raise CliError(
            "--instruction and --dimensions do not apply to --collection: it is searched with "
            "the model and options it was built with"
        )
    options = given_options(args, RuntimeConfig)
    check_options(RuntimeConfig, options)
    progress = not args.quiet
    started = time.perf_counter()
    try:
        dataset = _load(args)
        if args.save_dataset:
            write_beir(dataset, args.save_dataset, args.split)
    except (DataError, ValueError) as e:
        raise CliError(str(e)) from e
    if args.sample is not None:
        dataset = dataset.sample(args.sample, args.seed)
    if progress:
        sys.stderr.write(
            f"eval: {dataset.name}: {len(dataset.queries)} queries, "
            f"{len(dataset.corpus)} documents\n"
        )
    embedder = reranker = None
    dense_run = dense_name = dense_texts = None
    dense_seconds = 0.0
    from qwen3_rag.cli.store import model_hint
    from qwen3_rag.core import Qwen3Embedder, Qwen3Reranker

    if args.collection is not None:
        searched = time.perf_counter()
        dense_run, dense_name, dense_texts = _collection_run(args, dataset, progress)
        dense_seconds = time.perf_counter() - searched
    elif args.embedding_model is not None or not args.baselines:
        with model_hint("--embedding-model", "EMBED_MODEL"):
            embedder = Qwen3Embedder(
                model_reference(args.embedding_model or DEFAULT_EMBEDDING_MODEL),
                show_progress=progress,
                **options,
            )
    if args.reranker_model is not None:
        reranker_options = {k: v for k, v in options.items() if k != "revision"}
        with model_hint("--reranker-model", "RERANK_MODEL"):
            reranker = Qwen3Reranker(
                model_reference(args.reranker_model), show_progress=False, **reranker_options
            )
    cache_dir = None if args.no_cache else Path(args.eval_cache).expanduser()
    try:
        rows = evaluate(
            dataset,
            embedder=embedder,
            reranker=reranker,
            rerank_k=args.rerank_k,
            instructions=args.instructions or [None],
            dimensions=args.dimensions or [None],
            baselines=args.baselines or [],
            hybrid=args.hybrid,
            metrics=metrics,
            cache_dir=cache_dir,
            dense_run=dense_run,
            dense_name=dense_name,
            dense_texts=dense_texts,
            dense_seconds=dense_seconds,
            progress=progress,
            device=options.get("device"),
        )
    except DataError as e:
        raise CliError(str(e)) from e
    if args.save_runs:
        taken: set[str] = set()
        for row in rows:
            path = Path(args.save_runs) / f"{_safe_name(row.name, taken)}.trec"
            row.run_file = write_trec_run(row.run, path, row.name).resolve()
    result: dict[str, Any] = {
        "dataset": {
            "name": dataset.name,
            "path": str(Path(args.data).resolve()),
            "queries": len(dataset.queries),
            "documents": len(dataset.corpus),
            "sample": args.sample,
            "seed": args.seed if args.sample is not None else None,
        },
        "runs": [row.as_json() for row in rows],
    }
    if args.json:
        from qwen3_rag.datafiles import write_atomic

        write_atomic(args.json, [json.dumps(result, indent=2, ensure_ascii=False) + "\n"])
    if args.plot:
        from qwen3_rag.eval.plot import plot_results

        plot_results(rows, dataset, args.plot, title=dataset.name)
    out(f"{dataset.name}: {len(dataset.queries)} queries, {len(dataset.corpus)} documents")
    for line in format_table(result["runs"], metrics):
        out(line)
    if args.json:
        out(f"results: {args.json}")
    if args.save_runs:
        out(f"run files: {args.save_runs}")
    if args.save_dataset:
        out(f"dataset: {args.save_dataset}")
    if args.plot:
        out(f"plot: {args.plot}")
    logger.info("eval finished in %.1f s", time.perf_counter() - started)
    return EXIT_OK


def register(sub: Any) -> None:
    """Add ``eval`` to the ``qwen3-rag`` subcommands."""
    p = sub.add_parser(
        "eval",
        help="measure retrieval quality (nDCG, recall, MRR) on a BEIR folder or a QA file",
        description="Evaluate the embedder, the reranker and baselines on your data. DATA is a "
        "BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or a CSV/TSV/JSONL file "
        "of questions and answers (answers become the documents).",
    )
    p.add_argument(
        "data",
        help="BEIR folder, .csv/.tsv/.jsonl question-answer file, or 'stdlib' (a code-search "
        "set built from Python's standard library; 'stdlib:json.decoder,shlex' picks modules)",
    )
    p.add_argument(
        "--embedding-model",
        default=None,
        help=f"Qwen3 embedding model: hub id or local folder (default: {DEFAULT_EMBEDDING_MODEL},"
        " unless only --baseline runs are asked for)",
    )
    p.add_argument("--reranker-model", default=None, help="rerank the dense run with this model")
    p.add_argument(
        "--rerank-k",
        type=_positive,
        default=100,
        help="candidates reranked per query (default: 100)",
    )
    p.add_argument(
        "--instruction",
        dest="instructions",
        action="append",
        default=None,
        help='query instruction, one row each (repeatable; "" = none; default: the model\'s own)',
    )
    p.add_argument(
        "--dimensions",
        type=_dimensions,
        default=None,
        help="comma list of MRL lengths, one row each (e.g. 1024,256,64)",
    )
    p.add_argument(
        "--baseline",
        dest="baselines",
        action="append",
        default=None,
        help="bm25, or st:MODEL (a sentence-transformers id or folder); repeatable",
    )
    p.add_argument(
        "--hybrid", action="store_true", help="add a BM25 + dense reciprocal-rank-fusion row"
    )
    p.add_argument(
        "--metrics",
        default=None,
        help="comma list (default: ndcg@10,recall@5,recall@10,recall@30,recall@100,"
        "mrr@10,map@100); also precision@k",
    )
    data = p.add_argument_group("data")
    data.add_argument("--split", default="test", help="BEIR qrels split (default: test)")
    data.add_argument(
        "--question-field",
        default="question",
        help="QA file column with the questions (default: question)",
    )
    data.add_argument(
        "--answer-field", default="answer", help="QA file column with the answers (default: answer)"
    )
    data.add_argument(
        "--sample",
        type=_positive,
        default=None,
        help="evaluate N queries drawn at random (the corpus stays whole)",
    )
    data.add_argument("--seed", type=int, default=0, help="seed of --sample (default: 0)")
    data.add_argument(
        "--save-dataset",
        default=None,
        metavar="DIR",
        help="also write the whole dataset (before --sample) as a BEIR folder",
    )
    output = p.add_argument_group("output")
    output.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    output.add_argument(
        "--save-runs", default=None, metavar="DIR", help="write one TREC run file (top 100) per row"
    )
    output.add_argument(
        "--plot",
        default=None,
        metavar="PATH",
        help="save recall@k curves and nDCG@10 bars (PNG, SVG or PDF)",
    )
    add_output_flags(output)
    cache = p.add_argument_group("corpus-vector cache")
    cache.add_argument(
        "--eval-cache",
        default=str(DEFAULT_EVAL_CACHE),
        metavar="DIR",
        help=f"folder of cached corpus vectors (default: {DEFAULT_EVAL_CACHE})",
    )
    cache.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    store = p.add_argument_group("search an indexed Chroma collection instead of exact search")
    store.add_argument(
        "--collection",
        default=None,
        help="collection built by `qwen3-rag index` (its model and options are used)",
    )
    where = store.add_mutually_exclusive_group()
    where.add_argument("--db", default=None, help="embedded Chroma folder")
    where.add_argument(
        "--chroma-url", default=None, help="Chroma server, e.g. http://localhost:8000"
    )
    store.add_argument(
        "--id-field",
        default=None,
        help="metadata field holding the dataset's document id (default: the record id)",
    )
    add_config_flags(
        p.add_argument_group(
            "model options (both models; --revision applies to the embedding model)"
        ),
        RuntimeConfig,
    )
    p.set_defaults(func=cmd_eval)
