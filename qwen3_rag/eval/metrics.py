"""Metric names as the table and JSON spell them, computed by ir-measures (trec_eval's code).

Names are lower case, ``name@cutoff``: ``ndcg@10``, ``recall@5``, ``mrr@10``, ``map@100``,
``precision@10``. Each maps to an ir-measures measure (``nDCG@10``, ``R@5``, ``RR@10``,
``AP@100``, ``P@10``), which pytrec-eval-terrier computes; nothing here re-implements a metric.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

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

#: Our name -> the ir-measures measure name.
_MEASURES = {"ndcg": "nDCG", "recall": "R", "mrr": "RR", "map": "AP", "precision": "P"}
_NAME = re.compile(r"^(?P<metric>[a-z]+)(?:@(?P<cutoff>[1-9][0-9]*))?$")

#: A run: query id -> {document id: score}; higher scores rank first.
Run = dict[str, dict[str, float]]


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


def _measure(name: str) -> Any:
    import ir_measures

    match = _NAME.match(name)
    assert match is not None
    text = _MEASURES[match["metric"]] + (f"@{match['cutoff']}" if match["cutoff"] else "")
    return ir_measures.parse_measure(text)


def compute_metrics(
    qrels: Mapping[str, Mapping[str, int]],
    run: Mapping[str, Mapping[str, float]],
    metrics: Sequence[str] | None = None,
) -> dict[str, float]:
    """Mean of each metric over the queries of ``qrels``, by name.

    A query of ``qrels`` that the run does not answer counts as 0 (ir-measures would skip it,
    flattering a run that fails on hard queries).

    Args:
        qrels: Query id -> {document id: relevance}.
        run: Query id -> {document id: score}.
        metrics: Names (see :data:`DEFAULT_METRICS`); None: the defaults.
    """
    import ir_measures

    names = parse_metrics(metrics)
    measures = {name: _measure(name) for name in names}
    qrels_ = {q: {d: int(r) for d, r in docs.items()} for q, docs in qrels.items()}
    run_ = {q: {d: float(s) for d, s in run.get(q, {}).items()} for q in qrels_}
    totals = dict.fromkeys(names, 0.0)
    by_measure = {m: n for n, m in measures.items()}
    for row in ir_measures.iter_calc(list(measures.values()), qrels_, run_):
        totals[by_measure[row.measure]] += float(row.value)
    count = max(len(qrels_), 1)
    return {name: totals[name] / count for name in names}
