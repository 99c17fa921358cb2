"""Evaluate embedders, rerankers and baselines on a :class:`~qwen3_rag.eval.Dataset`."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qwen3_rag.core.config import check_dimensions

from .data import Dataset
from .metrics import PerQuery, Run, mean_metrics, parse_metrics, per_query_metrics
from .runs import (
    RUN_DEPTH,
    VectorCache,
    bm25_run,
    cached_vectors,
    exact_search,
    load_sentence_transformer,
    qwen3_cache_key,
    rerank_run,
    rrf,
    st_run,
    truncate,
)
from .significance import DEFAULT_PERMUTATIONS, compare_per_query


@dataclass
class RunResult:
    """One row of an evaluation: what ran, its metrics (mean and per query), how long it took.

    Attributes:
        name: The row's name in the table, JSON and plot; unique within one evaluation.
        metrics: Metric name -> mean value over the queries.
        seconds: Wall time to produce the run (cached corpus vectors make it shorter).
        run: Query id -> {document id: score}, top :data:`~qwen3_rag.eval.runs.RUN_DEPTH`.
        per_query: Query id -> {metric name: value}; ``metrics`` is its mean.
        kind: ``"dense"`` (exact search), ``"collection"`` (a Chroma collection), ``"rerank"``,
            ``"bm25"``, ``"st"`` (sentence-transformers), ``"hybrid"`` or ``"retriever"``.
        model: The embedding model (hub id or folder, as given), or None (BM25).
        instruction: The query instruction the run used (the text; ``""`` for none), or None
            where no instruction applies (baselines).
        instruction_tag: The short tag (``"I1"``) that names ``instruction`` in the row name.
        dimensions: The vector length searched, or None where it does not apply.
        reranker: The reranking model, or None.
        rerank_k: Candidates reranked per query, or None.
        baseline: ``"bm25"`` or ``"st:MODEL"`` for a baseline row (and ``"bm25"`` for the
            hybrid row, fused with the dense run), else None.
        compare_to: The row the p-values compare against (None: no test, or this is it).
        p_values: Metric -> paired randomization-test p-value against ``compare_to``.
        run_file: The TREC run file, once written.
    """

    name: str
    metrics: dict[str, float]
    seconds: float
    run: Run = field(repr=False)
    per_query: PerQuery = field(default_factory=dict, repr=False)
    kind: str = "retriever"
    model: str | None = None
    instruction: str | None = None
    instruction_tag: str | None = None
    dimensions: int | None = None
    reranker: str | None = None
    rerank_k: int | None = None
    baseline: str | None = None
    compare_to: str | None = None
    p_values: dict[str, float] | None = None
    run_file: Path | None = None

    def as_json(self, per_query: bool = True) -> dict[str, Any]:
        """The JSON row: what ran, ``metrics``, ``significance``, ``seconds``, ``run_file``.

        Args:
            per_query: Include ``per_query`` (query id -> {metric: value}).
        """
        row: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "model": self.model,
            "instruction": self.instruction,
            "dimensions": self.dimensions,
            "reranker": self.reranker,
            "rerank_k": self.rerank_k,
            "baseline": self.baseline,
            "metrics": self.metrics,
            "significance": None
            if self.p_values is None
            else {"compare_to": self.compare_to, "p_values": self.p_values},
            "seconds": self.seconds,
        }
        if self.run_file is not None:
            row["run_file"] = str(self.run_file)
        if per_query:
            row["per_query"] = self.per_query
        return row


def _cache(cache_dir: str | os.PathLike[str] | None) -> VectorCache | None:
    return None if cache_dir is None else VectorCache(cache_dir)


def check_embedder_dimensions(embedder: Any, dimensions: int | None) -> None:
    """Refuse an MRL length ``embedder`` cannot give, from its config, before any embedding.

    Raises:
        ValueError: Naming the value, the model and its range (core's ``check_dimensions``).
    """
    if dimensions is None:
        return
    width = getattr(embedder, "output_dimensions", None)
    if isinstance(width, int):
        check_dimensions(dimensions, width, getattr(embedder, "model_name", "the embedder"))


class DenseRunner:
    """Exact-search runs of one Qwen3 embedder: corpus embedded once, queries once per instruction.

    Every instruction and MRL dimension reuses the same corpus vectors (full length, truncated
    and renormalised per dimension), so a sweep costs query embeddings only.

    Args:
        embedder: A :class:`~qwen3_rag.core.Qwen3Embedder`.
        dataset: The data.
        cache_dir: Folder of cached corpus vectors; None: no cache.
        corpus_vectors: The corpus already embedded by this embedder (rows in corpus order).
    """

    def __init__(
        self,
        embedder: Any,
        dataset: Dataset,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        corpus_vectors: np.ndarray | None = None,
    ) -> None:
        self.embedder = embedder
        self.dataset = dataset
        self.cache = _cache(cache_dir)
        self._docs = corpus_vectors
        self._queries: dict[str | None, np.ndarray] = {}

    def for_queries(self, dataset: Dataset) -> DenseRunner:
        """A runner for other queries over the same corpus, sharing its vectors.

        Raises:
            ValueError: If ``dataset``'s corpus is not this runner's.
        """
        if dataset.corpus != self.dataset.corpus:
            raise ValueError("for_queries needs a dataset with the same corpus")
        runner = DenseRunner(self.embedder, dataset, corpus_vectors=self.corpus_vectors())
        runner.cache = self.cache
        return runner

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
                the embedder's output (checked before anything is embedded).
        """
        check_embedder_dimensions(self.embedder, dimensions)
        docs = self.corpus_vectors()
        if dimensions is not None:
            check_dimensions(dimensions, docs.shape[1], "the corpus vectors")
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
        ValueError: For an unknown metric or a ``dimensions`` the embedder cannot give.

    Example:
        >>> from qwen3_rag.core import Qwen3Embedder  # doctest: +SKIP
        >>> data = load_beir("./my-beir-folder")  # doctest: +SKIP
        >>> evaluate_embedder(Qwen3Embedder(), data)["ndcg@10"]  # doctest: +SKIP
        0.61...
    """
    names = parse_metrics(metrics)
    run = DenseRunner(embedder, dataset, cache_dir=cache_dir).run(instruction, dimensions)
    return mean_metrics(per_query_metrics(dataset.qrels, run, names), names)


def evaluate_run(
    name: str,
    dataset: Dataset,
    run: Run,
    seconds: float,
    metrics: Sequence[str] | None = None,
    **described: Any,
) -> RunResult:
    """A :class:`RunResult` for a ready run.

    Args:
        name: The row name.
        dataset: The data the run answers.
        run: Query id -> {document id: score}.
        seconds: How long the run took.
        metrics: Metric names; None: the defaults.
        **described: :class:`RunResult` fields that say what ran (``kind``, ``model``...).
    """
    names = parse_metrics(metrics)
    values = per_query_metrics(dataset.qrels, run, names)
    return RunResult(name, mean_metrics(values, names), seconds, run, values, **described)


def model_label(model: str | os.PathLike[str]) -> str:
    """A short name for a model: the last part of a hub id or folder path."""
    return Path(os.fspath(model).rstrip("/\\")).name or os.fspath(model)


def instruction_tags(instructions: Sequence[str | None]) -> dict[str | None, str | None]:
    """The tag that names each instruction in row names (its full text goes in the legend).

    None (the model's own) gets no tag, ``""`` gets ``"no instruction"``, the others ``"I1"``,
    ``"I2"``... in order.
    """
    tags: dict[str | None, str | None] = {}
    number = 0
    for instruction in dict.fromkeys(instructions):
        if instruction is None:
            tags[None] = None
        elif instruction == "":
            tags[""] = "no instruction"
        else:
            number += 1
            tags[instruction] = f"I{number}"
    return tags


def legend(rows: Sequence[RunResult]) -> list[str]:
    """One line per instruction tag used in ``rows``: ``I1 = 'the full instruction'``."""
    seen: dict[str, str] = {}
    for row in rows:
        if row.instruction_tag and row.instruction_tag.startswith("I") and row.instruction:
            seen.setdefault(row.instruction_tag, row.instruction)
    return [f"{tag} = {text!r}" for tag, text in seen.items()]


def _unique(names: list[str]) -> list[str]:
    """``names`` with a repeated one numbered (``#2``, ``#3``...), so every row is findable."""
    out: list[str] = []
    for name in names:
        candidate, n = name, 2
        while candidate in out:
            candidate, n = f"{name} #{n}", n + 1
        out.append(candidate)
    return out


def resolve_row(names: Sequence[str], which: int | str) -> int:
    """The index of the row ``which`` names: its exact name, or its 1-based number as text.

    Raises:
        ValueError: If no row matches (the message lists the names).
    """
    if isinstance(which, int) and not isinstance(which, bool):
        if 0 <= which < len(names):
            return which
    elif isinstance(which, str):
        if which in names:
            return names.index(which)
        if which.isdigit() and 1 <= int(which) <= len(names):
            return int(which) - 1
    listed = ", ".join(f"{i}: {n!r}" for i, n in enumerate(names, 1))
    raise ValueError(f"compare_to={which!r} names no row; the rows are {listed}")


@dataclass
class _Row:
    """A planned row: its name and what it is, before anything runs."""

    name: str
    kind: str
    described: dict[str, Any]
    request: Any = None  # dense: (instruction as asked, dimensions); baseline: its spec


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
    compare_to: int | str | None = None,
    permutations: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> list[RunResult]:
    """Every requested run on ``dataset``, one :class:`RunResult` per row, with p-values.

    Rows, in order: the embedder per instruction and dimensions (exact search); the reranker
    over the first of them (top ``rerank_k``); each baseline (``"bm25"``, ``"st:MODEL"``);
    hybrid (reciprocal rank fusion of BM25 and the first dense row) when asked. Every row but
    the one compared to gets a paired randomization-test p-value per metric against it.

    Everything that can be refused is refused before any document is embedded: metrics,
    baselines (sentence-transformers models are loaded first), dimensions against the
    embedder's width, and ``compare_to``.

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
        compare_to: The row every other is tested against: its name, or its index (0-based
            int, or 1-based number as text); None: the first dense row, else the first row.
        permutations: Resamples of each randomization test.
        seed: Seed of the tests.

    Raises:
        ValueError: For an unknown baseline, metric or ``compare_to``, a dimension the
            embedder cannot give, a sentence-transformers model that cannot be loaded, or a
            reranker/hybrid without a dense run.
    """
    names = parse_metrics(metrics)
    for baseline in baselines:
        if baseline != "bm25" and not (baseline.startswith("st:") and len(baseline) > 3):
            raise ValueError(f"unknown baseline {baseline!r}; use 'bm25' or 'st:MODEL'")
    if embedder is not None and dense_run is None:
        for dims in dimensions:
            check_embedder_dimensions(embedder, dims)
    plan = _plan(
        embedder, reranker, rerank_k, instructions, dimensions, baselines, hybrid, dense_run,
        dense_name,
    )  # fmt: skip
    reference = (
        resolve_row([r.name for r in plan], compare_to)
        if compare_to is not None
        else next((i for i, r in enumerate(plan) if r.kind in ("dense", "collection")), 0)
    )
    # Loaded before any embedding: a model that cannot load fails now, not after the corpus.
    st_models = {
        b: load_sentence_transformer(b[3:], device)
        for b in dict.fromkeys(baselines)
        if b.startswith("st:")
    }
    rows: list[RunResult] = []
    runner = None if embedder is None else DenseRunner(embedder, dataset, cache_dir=cache_dir)
    bm25: Run | None = None
    for row in plan:
        started = time.perf_counter()
        if row.kind == "collection":
            assert dense_run is not None
            run = dense_run
        elif row.kind == "dense":
            assert runner is not None
            run = runner.run(*row.request)
        elif row.kind == "rerank":
            run = rerank_run(
                reranker, dataset, rows[0].run, rerank_k, texts=dense_texts, progress=progress
            )
        elif row.kind == "bm25":
            bm25 = run = bm25_run(dataset)
        elif row.kind == "st":
            run = st_run(
                row.request[3:],
                dataset,
                loaded=st_models[row.request],
                cache=_cache(cache_dir),
                progress=progress,
            )
        else:  # hybrid
            bm25 = bm25 if bm25 is not None else bm25_run(dataset)
            run = rrf([bm25, rows[0].run])
        seconds = dense_seconds if row.kind == "collection" else time.perf_counter() - started
        rows.append(evaluate_run(row.name, dataset, run, seconds, names, **row.described))
    if len(rows) > 1:
        base = rows[reference]
        for i, result in enumerate(rows):
            if i != reference:
                result.compare_to = base.name
                result.p_values = compare_per_query(
                    result.per_query, base.per_query, names, permutations=permutations, seed=seed
                )
    return rows


def _plan(
    embedder: Any | None,
    reranker: Any | None,
    rerank_k: int,
    instructions: Sequence[str | None],
    dimensions: Sequence[int | None],
    baselines: Sequence[str],
    hybrid: bool,
    dense_run: Run | None,
    dense_name: str | None,
) -> list[_Row]:
    """The rows :func:`evaluate` will make, named, in order (see there)."""
    plan: list[_Row] = []
    if dense_run is not None:
        plan.append(_Row(dense_name or "dense", "collection", {"kind": "collection"}))
    elif embedder is not None:
        label = model_label(embedder.model_name)
        tags = instruction_tags(instructions)
        width = getattr(embedder, "output_dimensions", None)
        for instruction, tag in tags.items():
            # A value given twice is one row.
            for dims in dict.fromkeys(dimensions):
                name = label + (f" [{tag}]" if tag else "") + (f" @{dims}d" if dims else "")
                described = {
                    "kind": "dense",
                    "model": embedder.model_name,
                    "instruction": getattr(embedder, "instruction", None)
                    if instruction is None
                    else instruction,
                    "instruction_tag": tag,
                    "dimensions": dims or width,
                }
                plan.append(_Row(name, "dense", described, (instruction, dims)))
    first = plan[0] if plan else None
    if reranker is not None:
        if first is None:
            raise ValueError("a reranker needs a dense run to rerank (an embedder or collection)")
        described = {
            **first.described,
            "kind": "rerank",
            "reranker": reranker.model_name,
            "rerank_k": rerank_k,
        }
        name = f"{first.name} + {model_label(reranker.model_name)} (top {rerank_k})"
        plan.append(_Row(name, "rerank", described))
    for baseline in dict.fromkeys(baselines):
        if baseline == "bm25":
            plan.append(_Row("bm25", "bm25", {"kind": "bm25", "baseline": "bm25"}, baseline))
        else:
            described = {"kind": "st", "model": baseline[3:], "baseline": baseline}
            name = "st:" + model_label(baseline[3:])
            plan.append(_Row(name, "st", described, baseline))
    if hybrid:
        if first is None:
            raise ValueError(
                "hybrid needs a dense run to fuse with BM25 (an embedder or collection)"
            )
        described = {**first.described, "kind": "hybrid", "baseline": "bm25"}
        plan.append(_Row(f"hybrid RRF (bm25 + {first.name})", "hybrid", described))
    for row, name in zip(plan, _unique([r.name for r in plan]), strict=True):
        row.name = name
    return plan
