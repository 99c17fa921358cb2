"""The evaluation plot: recall@k curves per run and nDCG@10 bars (matplotlib, Agg backend)."""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

from qwen3_rag.datafiles import open_atomic

from .data import Dataset
from .evaluate import RunResult, legend
from .metrics import compute_metrics

#: The cutoffs of the recall curves.
RECALL_CUTOFFS = (1, 2, 3, 5, 10, 20, 30, 50, 100)
#: File types the plot can be saved as (by the path's suffix).
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
#: Marker and line style per row, so curves that overlap (near chance) stay distinguishable.
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_LINES = ("-", "--", "-.", ":")


def check_plot_path(path: str | os.PathLike[str]) -> Path:
    """Refuse a plot path whose suffix names no supported file type.

    Raises:
        ValueError: If the suffix is not one of :data:`PLOT_SUFFIXES`.
    """
    target = Path(path)
    if target.suffix.lower() not in PLOT_SUFFIXES:
        raise ValueError(
            f"plot {str(target)!r}: unknown file type {target.suffix!r}; "
            f"use {', '.join(PLOT_SUFFIXES)}"
        )
    return target


def plot_results(
    rows: Sequence[RunResult],
    dataset: Dataset,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
) -> Path:
    """Save recall@k curves (one line per run) beside nDCG@10 bars, a legend under both.

    Rows are numbered (``#1``...) in the legend, which gives each its name, and on the bars;
    instructions appear in names as tags (``I1``) whose text is printed under the figure. The
    values are computed from the runs by the same metric code as the table. The file type
    follows the suffix (``.png``, ``.svg``, ``.pdf``); it is written atomically, with the mode
    the umask gives a new file.

    Returns:
        The file written.

    Raises:
        ValueError: For an unsupported suffix.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window or need a display
    import matplotlib.pyplot as plt

    target = check_plot_path(path)
    names = [f"recall@{k}" for k in RECALL_CUTOFFS]
    curves = [compute_metrics(dataset.qrels, row.run, [*names, "ndcg@10"]) for row in rows]
    notes = [
        textwrap.shorten(line, 160, placeholder="...'") for line in legend(rows)
    ]  # the table's legend and the JSON hold them in full
    labels = [f"#{i} {row.name}" for i, row in enumerate(rows, 1)]
    legend_rows = math.ceil((len(rows) + 1) / 2)  # two columns, the chance line included
    below = 0.2 * legend_rows + 0.2 * len(notes) + 0.2  # inches under the axes
    height = 4.6 + below
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, height), gridspec_kw={"width_ratios": [3, 2]}
    )
    for i, (label, values) in enumerate(zip(labels, curves, strict=True)):
        left.plot(
            RECALL_CUTOFFS,
            [values[n] for n in names],
            marker=_MARKERS[i % len(_MARKERS)],
            linestyle=_LINES[(i // len(_MARKERS)) % len(_LINES)],
            color=f"C{i % 10}",
            markersize=5,
            label=label,
        )
    chance = [min(k / max(len(dataset.corpus), 1), 1.0) for k in RECALL_CUTOFFS]
    left.plot(RECALL_CUTOFFS, chance, color="0.6", linewidth=1, linestyle=":", label="chance")
    left.set_xscale("log")
    left.set_xticks(RECALL_CUTOFFS, [str(k) for k in RECALL_CUTOFFS])
    left.set_xlabel("k (documents retrieved)")
    left.set_ylabel("recall@k")
    left.set_ylim(0, 1.02)
    left.grid(True, alpha=0.3)
    left.set_title("Recall@k")
    positions = list(range(len(rows)))
    bars = right.barh(
        positions, [v["ndcg@10"] for v in curves], color=[f"C{i % 10}" for i in positions]
    )
    right.bar_label(bars, fmt="%.3f", fontsize=8, padding=2)
    # Row numbers, named in the legend: long names would squeeze the bars.
    right.set_yticks(positions, [f"#{i}" for i in range(1, len(rows) + 1)])
    right.invert_yaxis()
    right.set_xlim(0, 1.1)
    right.set_xlabel("nDCG@10")
    right.set_title("nDCG@10 (higher is better)")
    fig.suptitle(
        f"{title or dataset.name}: {len(dataset.queries)} queries, {len(dataset.corpus)} documents"
    )
    # The legend and the instruction notes go under both panels, where they cover no curve.
    fig.legend(
        *left.get_legend_handles_labels(),
        loc="upper left",
        bbox_to_anchor=(0.01, (below - 0.1) / height),
        ncol=2,
        fontsize=8,
        frameon=False,
    )
    if notes:
        fig.text(0.01, 0.02, "\n".join(notes), fontsize=8, va="bottom", ha="left")
    fig.tight_layout(rect=(0, below / height, 1, 1))
    try:
        with open_atomic(target) as handle:
            fig.savefig(handle, dpi=110, format=target.suffix.lower()[1:])
    finally:
        plt.close(fig)
    return target
