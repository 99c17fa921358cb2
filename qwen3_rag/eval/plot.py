"""The evaluation plot: recall@k curves per run and nDCG@10 bars (matplotlib, Agg backend)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .data import Dataset
from .evaluate import RunResult
from .metrics import compute_metrics

#: The cutoffs of the recall curves.
RECALL_CUTOFFS = (1, 2, 3, 5, 10, 20, 30, 50, 100)


def plot_results(
    rows: Sequence[RunResult],
    dataset: Dataset,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Save recall@k curves (one line per run) beside nDCG@10 bars as one figure.

    The values are computed from the runs by the same metric library as the table. The file
    type follows the suffix (``.png``, ``.svg``, ``.pdf``); it is written atomically.

    Returns:
        The file written.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window or need a display
    import matplotlib.pyplot as plt

    names = [f"recall@{k}" for k in RECALL_CUTOFFS]
    curves = [compute_metrics(dataset.qrels, row.run, [*names, "ndcg@10"]) for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    for row, values in zip(rows, curves, strict=True):
        left.plot(RECALL_CUTOFFS, [values[n] for n in names], marker="o", label=row.name)
    left.set_xscale("log")
    left.set_xticks(RECALL_CUTOFFS, [str(k) for k in RECALL_CUTOFFS])
    left.set_xlabel("k (documents retrieved)")
    left.set_ylabel("recall@k")
    left.set_ylim(0, 1.02)
    left.grid(True, alpha=0.3)
    # The bars name the runs in the same colours; a legend would cover the curves.
    left.set_title("Recall@k (colours as in the bars)")
    positions = range(len(rows))
    bars = right.barh(
        list(positions), [v["ndcg@10"] for v in curves], color=[f"C{i}" for i in positions]
    )
    right.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    right.set_yticks(list(positions), [row.name for row in rows], fontsize=8)
    right.invert_yaxis()
    right.set_xlim(0, 1.1)
    right.set_xlabel("nDCG@10")
    right.set_title("nDCG@10 (higher is better)")
    fig.suptitle(
        f"{title or dataset.name}: {len(dataset.queries)} queries, {len(dataset.corpus)} documents"
    )
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=target.suffix)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return target
