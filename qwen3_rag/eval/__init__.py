"""``qwen3-rag eval``: retrieval quality on your own data (recall, nDCG, MRR).

Load a BEIR folder (:func:`load_beir`) or a question-answer file (:func:`load_qa`), or build a
real code-search set offline (:func:`stdlib_code_search`), then score a Qwen3 embedder
(:func:`evaluate_embedder`) or a whole set of runs with reranking and baselines
(:func:`evaluate`), with per-query values and paired significance tests between rows.
Every metric comes from trec_eval's code (pytrec-eval-terrier), with its order for ties.
:func:`search_instructions` chooses a query instruction on a dev split and reports it on a
held-out test split.
"""

from .data import DataError, Dataset, join_title, load_beir, load_dataset, load_qa, write_beir
from .evaluate import DenseRunner, RunResult, evaluate, evaluate_embedder, evaluate_run
from .instructions import (
    SearchResult,
    propose_instructions,
    read_candidates,
    search_instructions,
    split_queries,
)
from .metrics import DEFAULT_METRICS, compute_metrics, parse_metrics, per_query_metrics
from .runs import RUN_DEPTH, VectorCache, bm25_run, exact_search, rerank_run, rrf, write_trec_run
from .significance import paired_p_value
from .stdlib import DEFAULT_MODULES, build_stdlib_dataset, stdlib_code_search

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_MODULES",
    "RUN_DEPTH",
    "DataError",
    "Dataset",
    "DenseRunner",
    "RunResult",
    "SearchResult",
    "VectorCache",
    "bm25_run",
    "build_stdlib_dataset",
    "compute_metrics",
    "evaluate",
    "evaluate_embedder",
    "evaluate_run",
    "exact_search",
    "join_title",
    "load_beir",
    "load_dataset",
    "load_qa",
    "paired_p_value",
    "parse_metrics",
    "per_query_metrics",
    "propose_instructions",
    "read_candidates",
    "rerank_run",
    "rrf",
    "search_instructions",
    "split_queries",
    "stdlib_code_search",
    "write_beir",
    "write_trec_run",
]
