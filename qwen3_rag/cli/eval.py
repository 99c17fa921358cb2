"""``qwen3-rag eval``: retrieval quality of embedders, rerankers and baselines on your data.

With ``--search-instructions`` it searches for the query instruction instead: candidates on a
dev split of the queries, the best reported on the held-out rest (see
:mod:`qwen3_rag.eval.instructions`).

This module holds the parser and the command; what it reads and checks is in
:mod:`.eval_inputs`, the instruction search in :mod:`.eval_search`, the text it prints in
:mod:`.eval_report`.
"""

from __future__ import annotations

import argparse
import json
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
from qwen3_rag.cli.eval_inputs import (
    _check_request,
    _collection_run,
    _dataset_json,
    _dimensions,
    _embedder,
    _fraction,
    _load,
    _positive,
    _require_eval,
)
from qwen3_rag.cli.eval_report import format_table
from qwen3_rag.cli.eval_search import LLM_CACHE_FILE, _candidates, _search
from qwen3_rag.core import DEFAULT_EMBEDDING_MODEL, RuntimeConfig

#: Where corpus vectors are kept between runs unless ``--eval-cache`` says otherwise.
DEFAULT_EVAL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "qwen3-rag" / "eval"
#: Where ``--search-instructions`` writes its choice unless ``--save-instruction`` says otherwise.
DEFAULT_INSTRUCTION_FILE = "instruction.json"


def _safe_name(name: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("_")[:80] or "run"
    candidate, n = stem, 2
    while candidate in taken:
        candidate, n = f"{stem}-{n}", n + 1
    taken.add(candidate)
    return candidate


def cmd_eval(args: argparse.Namespace) -> int:
    """Load the data, make every requested run, print and write the results."""
    _require_eval()
    from qwen3_rag.eval import DataError, evaluate, parse_metrics, write_beir, write_trec_run
    from qwen3_rag.eval.evaluate import legend

    try:
        metrics = list(parse_metrics(args.metrics))
    except ValueError as e:
        raise CliError(str(e)) from e
    _check_request(args)
    options = given_options(args, RuntimeConfig)
    check_options(RuntimeConfig, options)
    candidates = _candidates(args)
    progress = not args.quiet
    started = time.perf_counter()
    try:
        dataset = _load(args)
        if args.save_dataset:
            write_beir(dataset, args.save_dataset, args.split, overwrite=args.overwrite)
    except (DataError, ValueError, FileExistsError) as e:
        raise CliError(str(e)) from e
    if args.sample is not None:
        dataset = dataset.sample(args.sample, args.seed)
    if progress:
        sys.stderr.write(
            f"eval: {dataset.name}: {len(dataset.queries)} queries, "
            f"{len(dataset.corpus)} documents\n"
        )
    if args.search_instructions:
        return _search(args, dataset, metrics, options, candidates, progress)
    embedder = reranker = None
    dense_run = dense_name = dense_texts = None
    dense_seconds = 0.0
    from qwen3_rag.cli.common import model_hint
    from qwen3_rag.core import Qwen3Reranker

    if args.collection is not None:
        searched = time.perf_counter()
        dense_run, dense_name, dense_texts = _collection_run(args, dataset, progress)
        dense_seconds = time.perf_counter() - searched
    elif args.embedding_model is not None or not args.baselines:
        embedder = _embedder(args, options, progress)
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
            compare_to=args.compare_to,
            permutations=args.permutations,
            seed=args.seed,
        )
    except (DataError, ValueError) as e:
        raise CliError(str(e)) from e
    if args.save_runs:
        taken: set[str] = set()
        for row in rows:
            path = Path(args.save_runs) / f"{_safe_name(row.name, taken)}.trec"
            row.run_file = write_trec_run(row.run, path, row.name).resolve()
    result: dict[str, Any] = {
        "dataset": _dataset_json(args, dataset),
        "significance": {
            "test": "paired randomization (sign flip) test of the per-query values",
            "permutations": args.permutations,
            "seed": args.seed,
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
    for line in format_table([row.as_json(per_query=False) for row in rows], metrics):
        out(line)
    for line in legend(rows):
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
        help='query instruction, one row each (repeatable; "" = none; default: the model\'s '
        "own); rows name them I1, I2... and a legend line prints each in full",
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
    significance = p.add_argument_group("significance")
    significance.add_argument(
        "--compare-to",
        default=None,
        metavar="ROW",
        help="the row every other is tested against: its name or its number (1 = first); "
        "default: the first dense row",
    )
    significance.add_argument(
        "--permutations",
        type=_positive,
        default=10_000,
        help="resamples of each paired randomization test (default: 10000; seeded by --seed)",
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
    data.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of --sample, the significance tests and the dev/test split (default: 0)",
    )
    data.add_argument(
        "--save-dataset",
        default=None,
        metavar="DIR",
        help="also write the whole dataset (before --sample) as a BEIR folder (a new or empty "
        "one, unless --overwrite)",
    )
    data.add_argument(
        "--overwrite",
        action="store_true",
        help="let --save-dataset replace the dataset files of a non-empty folder",
    )
    output = p.add_argument_group("output")
    output.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="write the results as JSON (what each row is, metrics, p-values, per-query values)",
    )
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
    search = p.add_argument_group(
        "instruction search (instead of the rows above): candidates scored on a dev split of "
        "the queries, the best reported on the held-out rest against the default instruction"
    )
    search.add_argument(
        "--search-instructions",
        action="store_true",
        help="search for the query instruction; candidates: --instruction, --candidates, "
        "--propose (the model's own is always one)",
    )
    search.add_argument(
        "--candidates", default=None, metavar="FILE", help="candidate instructions, one a line"
    )
    search.add_argument(
        "--propose",
        type=_positive,
        default=None,
        metavar="N",
        help="also ask an LLM (--llm-model, --llm-url) for N instructions, shown dev queries",
    )
    search.add_argument(
        "--dev-fraction",
        type=_fraction,
        default=0.5,
        help="share of the queries that choose (default: 0.5); the rest report",
    )
    search.add_argument(
        "--search-metric",
        default=None,
        help="the metric that chooses (default: the first of --metrics, ndcg@10)",
    )
    search.add_argument(
        "--save-instruction",
        default=DEFAULT_INSTRUCTION_FILE,
        metavar="PATH",
        help=f"JSON file of the choice and its evidence (default: {DEFAULT_INSTRUCTION_FILE})",
    )
    search.add_argument(
        "--llm-model",
        default=None,
        help="a local causal LM folder, or with --llm-url the endpoint's model name",
    )
    search.add_argument(
        "--llm-url",
        default=None,
        help="an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1",
    )
    search.add_argument(
        "--llm-api-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the endpoint's key (default: OPENAI_API_KEY)",
    )
    search.add_argument(
        "--llm-cache",
        default=None,
        metavar="PATH",
        help=f"reply cache of the proposals; a re-run resumes from it (default: "
        f"{LLM_CACHE_FILE} in --eval-cache)",
    )
    search.add_argument(
        "--temperature", type=float, default=0.7, help="LLM sampling temperature (default: 0.7)"
    )
    search.add_argument(
        "--max-new-tokens",
        type=_positive,
        default=512,
        help="longest LLM reply in tokens (default: 512)",
    )
    search.add_argument(
        "--retries", type=int, default=5, help="retries of a failed LLM request (default: 5)"
    )
    search.add_argument(
        "--timeout", type=float, default=120.0, help="seconds per LLM request (default: 120)"
    )
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
