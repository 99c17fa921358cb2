"""``qwen3-rag eval``: retrieval quality on your own data (recall, nDCG, MRR).

Load a BEIR folder (:func:`load_beir`) or a question-answer file (:func:`load_qa`), or build a
real code-search set offline (:func:`stdlib_code_search`), then score a Qwen3 embedder
(:func:`evaluate_embedder`) or a whole set of runs with reranking and baselines
(:func:`evaluate`). Metrics come from ir-measures (trec_eval's implementation).
"""

from .data import DataError, Dataset, join_title, load_beir, load_dataset, load_qa, write_beir
from .evaluate import DenseRunner, RunResult, evaluate, evaluate_embedder, evaluate_run
from .metrics import DEFAULT_METRICS, compute_metrics, parse_metrics
from .runs import RUN_DEPTH, VectorCache, bm25_run, exact_search, rerank_run, rrf, write_trec_run
from .stdlib import DEFAULT_MODULES, build_stdlib_dataset, stdlib_code_search

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_MODULES",
    "RUN_DEPTH",
    "DataError",
    "Dataset",
    "DenseRunner",
    "RunResult",
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
    "parse_metrics",
    "rerank_run",
    "rrf",
    "stdlib_code_search",
    "write_beir",
    "write_trec_run",
]
