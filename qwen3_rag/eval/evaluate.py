"""Evaluate embedders, rerankers and baselines on a :class:`~qwen3_rag.eval.Dataset`."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qwen3_rag.core.spec import MIN_DIMENSIONS

from .data import Dataset
from .metrics import Run, compute_metrics, parse_metrics
from .runs import (
    RUN_DEPTH,
    VectorCache,
    bm25_run,
    cached_vectors,
    exact_search,
    qwen3_cache_key,
    rerank_run,
    rrf,
    st_run,
    truncate,
)


@dataclass
class RunResult:
    """One row of an evaluation: a named run, its metrics and how long it took.

    Attributes:
        name: The row's name in the table and JSON.
        metrics: Metric name -> mean value over the queries.
        seconds: Wall time to produce the run (cached corpus vectors make it shorter).
        run: Query id -> {document id: score}, top :data:`~qwen3_rag.eval.runs.RUN_DEPTH`.
        run_file: The TREC run file, once written.
    """

    name: str
    metrics: dict[str, float]
    seconds: float
    run: Run = field(repr=False)
    run_file: Path | None = None

    def as_json(self) -> dict[str, Any]:
        """The JSON row: ``name``, ``metrics``, ``seconds`` (and ``run_file`` when written)."""
        row: dict[str, Any] = {"name": self.name, "metrics": self.metrics, "seconds": self.seconds}
        if self.run_file is not None:
            row["run_file"] = str(self.run_file)
        return row


def _cache(cache_dir: str | os.PathLike[str] | None) -> VectorCache | None:
    return None if cache_dir is None else VectorCache(cache_dir)


class DenseRunner:
    """Exact-search runs of one Qwen3 embedder: corpus embedded once, queries once per instruction.

    Every instruction and MRL dimension reuses the same corpus vectors (full length, truncated
    and renormalised per dimension), so a sweep costs query embeddings only.
    """

    def __init__(
        self,
        embedder: Any,
        dataset: Dataset,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.embedder = embedder
        self.dataset = dataset
        self.cache = _cache(cache_dir)
        self._docs: np.ndarray | None = None
        self._queries: dict[str | None, np.ndarray] = {}

    def corpus_vectors(self) -> np.ndarray:
        """The corpus vectors (embedded or read from the cache once)."""
        if self._docs is None:
            self._docs = cached_vectors(
                self.cache,
                qwen3_cache_key(self.embedder),
                self.dataset.corpus,
                self.embedder.embed_documents,
            )
        return self._docs

    def query_vectors(self, instruction: str | None) -> np.ndarray:
        """The query vectors with ``instruction`` (None: the embedder's own)."""
        if instruction not in self._queries:
            texts = list(self.dataset.queries.values())
            self._queries[instruction] = np.asarray(
                self.embedder.embed_queries(texts, instruction=instruction), dtype=np.float32
            )
        return self._queries[instruction]

    def run(
        self, instruction: str | None = None, dimensions: int | None = None, depth: int = RUN_DEPTH
    ) -> Run:
        """Top ``depth`` documents per query.

        Raises:
            ValueError: If ``dimensions`` is below the models' smallest MRL size or larger than
                the embedder's output.
        """
        if dimensions is not None and dimensions < MIN_DIMENSIONS:
            raise ValueError(
                f"dimensions={dimensions} is below {MIN_DIMENSIONS}, the smallest MRL size the "
                "models were trained for"
            )
        docs = self.corpus_vectors()
        if dimensions is not None and dimensions > docs.shape[1]:
            raise ValueError(
                f"dimensions={dimensions} is larger than the embedder's {docs.shape[1]}-value "
                "vectors"
            )
        queries = self.query_vectors(instruction)
        return exact_search(
            truncate(queries, dimensions),
            truncate(docs, dimensions),
            list(self.dataset.queries),
            list(self.dataset.corpus),
            depth,
        )


def evaluate_embedder(
    embedder: Any,
    dataset: Dataset,
    *,
    instruction: str | None = None,
    dimensions: int | None = None,
    metrics: Sequence[str] | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[str, float]:
    """Retrieval quality of a Qwen3 embedder on ``dataset`` by exact inner-product search.

    Args:
        embedder: A :class:`~qwen3_rag.core.Qwen3Embedder`.
        dataset: The data (:func:`~qwen3_rag.eval.load_beir`, :func:`~qwen3_rag.eval.load_qa`...).
        instruction: Query instruction; None uses the embedder's, ``""`` embeds bare queries.
        dimensions: Keep this many values of each vector (MRL, renormalised); None keeps all.
        metrics: Metric names (``"ndcg@10"``, ``"recall@5"``, ``"mrr@10"``, ``"map@100"``...);
            None: :data:`~qwen3_rag.eval.DEFAULT_METRICS`.
        cache_dir: Folder for the corpus vectors (reused while model, revision, options and
            corpus are unchanged); None computes them every call.

    Returns:
        Metric name -> mean over the dataset's queries.

    Raises:
        ValueError: For an unknown metric or a ``dimensions`` larger than the vectors.

    Example:
        >>> from qwen3_rag.core import Qwen3Embedder  # doctest: +SKIP
        >>> data = load_beir("./my-beir-folder")  # doctest: +SKIP
        >>> evaluate_embedder(Qwen3Embedder(), data)["ndcg@10"]  # doctest: +SKIP
        0.61...
    """
    names = parse_metrics(metrics)
    run = DenseRunner(embedder, dataset, cache_dir=cache_dir).run(instruction, dimensions)
    return compute_metrics(dataset.qrels, run, names)


def evaluate_run(
    name: str, dataset: Dataset, run: Run, seconds: float, metrics: Sequence[str] | None = None
) -> RunResult:
    """A :class:`RunResult` for a ready run."""
    return RunResult(name, compute_metrics(dataset.qrels, run, metrics), seconds, run)


def model_label(model: str | os.PathLike[str]) -> str:
    """A short name for a model: the last part of a hub id or folder path."""
    return Path(os.fspath(model).rstrip("/\\")).name or os.fspath(model)


def instruction_label(instruction: str | None) -> str:
    """How a run name shows its query instruction."""
    if instruction is None:
        return ""
    if instruction == "":
        return " [no instruction]"
    short = instruction if len(instruction) <= 40 else instruction[:37] + "..."
    return f" [instruction={short!r}]"


def evaluate(
    dataset: Dataset,
    *,
    embedder: Any | None = None,
    reranker: Any | None = None,
    rerank_k: int = RUN_DEPTH,
    instructions: Sequence[str | None] = (None,),
    dimensions: Sequence[int | None] = (None,),
    baselines: Sequence[str] = (),
    hybrid: bool = False,
    metrics: Sequence[str] | str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    dense_run: Run | None = None,
    dense_name: str | None = None,
    dense_texts: dict[str, str] | None = None,
    dense_seconds: float = 0.0,
    progress: bool = False,
    device: str | None = None,
) -> list[RunResult]:
    """Every requested run on ``dataset``, one :class:`RunResult` per row.

    Rows, in order: the embedder per instruction and dimensions (exact search); the reranker
    over the first of them (top ``rerank_k``); each baseline (``"bm25"``, ``"st:MODEL"``);
    hybrid (reciprocal rank fusion of BM25 and the first dense row) when asked.

    Args:
        dataset: The data.
        embedder: A :class:`~qwen3_rag.core.Qwen3Embedder`, or None (baselines only, or a
            ``dense_run`` made elsewhere, e.g. by a Chroma collection).
        reranker: A :class:`~qwen3_rag.core.Qwen3Reranker`, or None.
        rerank_k: Candidates reranked per query.
        instructions: One row per instruction (None: the embedder's own; ``""``: none).
        dimensions: One row per MRL length (None: full length).
        baselines: ``"bm25"`` and/or ``"st:MODEL"`` (a sentence-transformers id or folder).
        hybrid: Add a BM25 + dense reciprocal-rank-fusion row.
        metrics: Metric names; None: the defaults.
        cache_dir: Corpus-vector cache folder; None: no cache.
        dense_run: A ready dense run to use instead of the embedder's (named ``dense_name``).
        dense_name: The name of ``dense_run``'s row.
        dense_texts: Texts of ``dense_run``'s documents, for the reranker (default: the corpus).
        dense_seconds: The time ``dense_run`` took (its row's ``seconds``).
        progress: Show progress bars (stderr).
        device: Device for sentence-transformers baselines.

    Raises:
        ValueError: For an unknown baseline or metric, or a reranker/hybrid without a dense run.
    """
    names = parse_metrics(metrics)
    for baseline in baselines:
        if baseline != "bm25" and not (baseline.startswith("st:") and len(baseline) > 3):
            raise ValueError(f"unknown baseline {baseline!r}; use 'bm25' or 'st:MODEL'")
    rows: list[RunResult] = []
    first: RunResult | None = None
    if dense_run is not None:
        first = evaluate_run(dense_name or "dense", dataset, dense_run, dense_seconds, names)
        rows.append(first)
    elif embedder is not None:
        runner = DenseRunner(embedder, dataset, cache_dir=cache_dir)
        label = model_label(embedder.model_name)
        # A value given twice is one row.
        for instruction in dict.fromkeys(instructions):
            for dims in dict.fromkeys(dimensions):
                started = time.perf_counter()
                run = runner.run(instruction, dims)
                name = label + instruction_label(instruction) + (f" @{dims}d" if dims else "")
                rows.append(evaluate_run(name, dataset, run, time.perf_counter() - started, names))
        first = rows[0]
    if reranker is not None:
        if first is None:
            raise ValueError("a reranker needs a dense run to rerank (an embedder or collection)")
        started = time.perf_counter()
        run = rerank_run(
            reranker, dataset, first.run, rerank_k, texts=dense_texts, progress=progress
        )
        name = f"{first.name} + {model_label(reranker.model_name)} (top {rerank_k})"
        rows.append(evaluate_run(name, dataset, run, time.perf_counter() - started, names))
    bm25: Run | None = None
    for baseline in dict.fromkeys(baselines):
        started = time.perf_counter()
        if baseline == "bm25":
            bm25 = run = bm25_run(dataset)
        else:
            run = st_run(
                baseline[3:], dataset, cache=_cache(cache_dir), progress=progress, device=device
            )
            baseline = "st:" + model_label(baseline[3:])
        rows.append(evaluate_run(baseline, dataset, run, time.perf_counter() - started, names))
    if hybrid:
        if first is None:
            raise ValueError(
                "hybrid needs a dense run to fuse with BM25 (an embedder or collection)"
            )
        started = time.perf_counter()
        if bm25 is None:
            bm25 = bm25_run(dataset)
        run = rrf([bm25, first.run])
        name = f"hybrid RRF (bm25 + {first.name})"
        rows.append(evaluate_run(name, dataset, run, time.perf_counter() - started, names))
    return rows
