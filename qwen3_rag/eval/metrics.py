"""Metric names as the table and JSON spell them, every one computed by trec_eval's code.

Names are lower case, ``name@cutoff``: ``ndcg@10``, ``recall@5``, ``mrr@10``, ``map@100``,
``precision@10``. Each is a trec_eval measure computed by pytrec-eval-terrier (trec_eval's C
code): ``ndcg_cut.10``, ``recall.5``, ``map_cut.100``, ``P.10``, and ``recip_rank`` over the
run cut at 10 documents for ``mrr@10`` (trec_eval has no cutoff for it). One implementation
means one order for tied scores, trec_eval's: higher score first, then document id descending.
Nothing here re-implements a metric.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

#: What ``qwen3-rag eval`` reports when ``--metrics`` is not given.
DEFAULT_METRICS = (
    "ndcg@10",
    "recall@5",
    "recall@10",
    "recall@30",
    "recall@100",
    "mrr@10",
    "map@100",
)

#: Our name -> trec_eval's measure, with a cutoff and without one.
_MEASURES = {
    "ndcg": ("ndcg_cut", "ndcg"),
    "recall": ("recall", "set_recall"),
    "mrr": ("recip_rank", "recip_rank"),
    "map": ("map_cut", "map"),
    "precision": ("P", "set_P"),
}
_NAME = re.compile(r"^(?P<metric>[a-z]+)(?:@(?P<cutoff>[1-9][0-9]*))?$")

#: A run: query id -> {document id: score}; higher scores rank first.
Run = dict[str, dict[str, float]]
#: Per-query values: query id -> {metric name: value}.
PerQuery = dict[str, dict[str, float]]


def parse_metrics(names: str | Iterable[str] | None) -> tuple[str, ...]:
    """Check metric names (a comma list or an iterable) and return them normalised.

    Raises:
        ValueError: For an unknown metric or a bad cutoff (the message lists what is valid).
    """
    if names is None:
        return DEFAULT_METRICS
    items = names.split(",") if isinstance(names, str) else list(names)
    result: list[str] = []
    for raw in items:
        name = raw.strip().lower()
        match = _NAME.match(name)
        if not match or match["metric"] not in _MEASURES:
            raise ValueError(
                f"unknown metric {raw.strip()!r}; use {', '.join(_MEASURES)} with an optional "
                "@cutoff, e.g. ndcg@10, recall@5, mrr@10, map@100"
            )
        if name not in result:
            result.append(name)
    if not result:
        raise ValueError("no metric given")
    return tuple(result)


def trec_order(docs: Mapping[str, float]) -> list[str]:
    """Document ids in trec_eval's rank order: score descending, then id descending."""
    # Two stable sorts: the id order first, then the score order keeps it within ties.
    by_id = sorted(docs, reverse=True)
    return sorted(by_id, key=lambda d: docs[d], reverse=True)


def _trec_measure(name: str) -> tuple[str, str, int | None]:
    """(pytrec_eval request, key of its result, depth the run is cut at first) of a name."""
    match = _NAME.match(name)
    assert match is not None
    with_cutoff, without = _MEASURES[match["metric"]]
    cutoff = match["cutoff"]
    if cutoff is None:
        return without, without, None
    if match["metric"] == "mrr":
        return with_cutoff, with_cutoff, int(cutoff)
    return f"{with_cutoff}.{cutoff}", f"{with_cutoff}_{cutoff}", None


def per_query_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | str | None = None,
) -> PerQuery:
    """Each metric for each query of ``qrels``, by trec_eval (pytrec-eval-terrier).

    A query of ``qrels`` that the run does not answer gets 0 for every metric (trec_eval would
    leave it out of the mean, flattering a run that fails on hard queries).

    Args:
        qrels: Query id -> {document id: relevance}; relevance >= 1 is relevant.
        run: Query id -> {document id: score}.
        metrics: Names (see :data:`DEFAULT_METRICS`); None: the defaults.

    Returns:
        Query id (in ``qrels`` order) -> {metric name: value}.

    Raises:
        ValueError: For an unknown metric.
    """
    import pytrec_eval

    names = parse_metrics(metrics)
    qrels_ = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    run_ = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in qrels_}
    # One evaluator per depth the run is cut at (None: the whole run).
    by_depth: dict[int | None, list[tuple[str, str, str]]] = {}
    for name in names:
        request, key, depth = _trec_measure(name)
        by_depth.setdefault(depth, []).append((name, request, key))
    result: PerQuery = {q: dict.fromkeys(names, 0.0) for q in qrels_}
    for depth, wanted in by_depth.items():
        cut = (
            run_
            if depth is None
            else {q: {d: docs[d] for d in trec_order(docs)[:depth]} for q, docs in run_.items()}
        )
        evaluator = pytrec_eval.RelevanceEvaluator(qrels_, {request for _, request, _ in wanted})
        for qid, values in evaluator.evaluate(cut).items():
            for name, _, key in wanted:
                result[qid][name] = float(values[key])
    return result


def mean_metrics(values: PerQuery, metrics: Sequence[str]) -> dict[str, float]:
    """The mean of each metric over the queries of ``values`` (0 for no query)."""
    count = max(len(values), 1)
    return {m: sum(v[m] for v in values.values()) / count for m in metrics}


def compute_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | str | None = None,
) -> dict[str, float]:
    """Mean of each metric over the queries of ``qrels``, by name.

    See :func:`per_query_metrics` (a query the run does not answer counts as 0).

    Args:
        qrels: Query id -> {document id: relevance}.
        run: Query id -> {document id: score}.
        metrics: Names (see :data:`DEFAULT_METRICS`); None: the defaults.
    """
    names = parse_metrics(metrics)
    return mean_metrics(per_query_metrics(qrels, run, names), names)
