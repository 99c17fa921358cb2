"""How ``qwen3-rag eval`` shows its results: the result table, p-values, the instruction search."""

from __future__ import annotations

import math
import textwrap
from typing import Any


def format_p(p: float | None) -> str:
    """A p-value as the table shows it: three decimals, ``<0.001`` below that."""
    if p is None:
        return "ref"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def format_table(rows: list[dict[str, Any]], metrics: list[str]) -> list[str]:
    """The result table: one row per run, the best value of each column marked with ``*``.

    When rows carry significance, a ``p(METRIC)`` column gives the first metric's p-value
    against the row compared to (``ref``).
    """
    best = {
        m: max((r["metrics"][m] for r in rows if not math.isnan(r["metrics"][m])), default=None)
        for m in metrics
    }
    tested = any(r.get("significance") for r in rows)
    header = ["run", *metrics, *([f"p({metrics[0]})"] if tested else []), "seconds"]
    body = []
    for r in rows:
        cells = [r["name"]]
        for m in metrics:
            value = r["metrics"][m]
            mark = "*" if best[m] is not None and value == best[m] and len(rows) > 1 else " "
            cells.append(f"{value:.4f}{mark}")
        if tested:
            significance = r.get("significance")
            cells.append(format_p(significance["p_values"][metrics[0]] if significance else None))
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
    reference = next((r["significance"]["compare_to"] for r in rows if r.get("significance")), None)
    if reference is not None:
        lines.append(
            f"p: paired randomization test of {metrics[0]} per query against {reference!r} "
            "(ref); below 0.05: unlikely to be noise (--json has every metric)"
        )
    return lines


def format_search(result: Any, metrics: list[str]) -> list[str]:
    """The instruction search as text: the dev table, the test comparison, the legend."""
    tags = {row["instruction"]: f"C{i}" for i, row in enumerate(result.dev, 1)}
    best = max(row["metrics"][result.metric] for row in result.dev)
    header = ["candidate (dev)", *metrics]
    body = []
    for row in result.dev:
        label = f"{tags[row['instruction']]} {row['source']}"
        marks = [
            f"{row['metrics'][m]:.4f}"
            + ("*" if m == result.metric and row["metrics"][m] == best else " ")
            for m in metrics
        ]
        body.append([label, *marks])
    p = result.test["p_values"]
    body.append(["-" * 4] * (len(metrics) + 1))
    chosen = f"test: chosen {tags[result.instruction]}"
    body.append([chosen, *[f"{result.test['chosen'][m]:.4f} " for m in metrics]])
    body.append(["test: default C1", *[f"{result.test['default'][m]:.4f} " for m in metrics]])
    body.append(["test: p", *[format_p(p[m]).rjust(6) + " " for m in metrics]])
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        f"instruction search: {len(result.dev_queries)} dev queries choose by {result.metric}, "
        f"{len(result.test_queries)} held-out test queries report"
    ]
    for cells in [header, ["-" * w for w in widths], *body]:
        lines.append(
            "  ".join(
                [
                    cells[0].ljust(widths[0]),
                    *[c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)],
                ]
            ).rstrip()
        )
    lines.append("* best on dev; p: paired randomization test, chosen vs default, on test")
    for row in result.dev:
        text = textwrap.shorten(row["instruction"], 200, placeholder="...")
        lines.append(f"{tags[row['instruction']]} = {text!r}" + ("" if text else " (none)"))
    if result.proposals is not None:
        summary = result.proposals
        rejected = ", ".join(f"{k} {v}" for k, v in summary.rejected.items())
        lines.append(
            f"LLM: {len(summary.accepted)} of {summary.requested} instructions proposed, "
            f"{summary.replies} replies ({summary.cached_replies} cached)"
            + (f", refused: {rejected}" if rejected else "")
        )
    if result.instruction == result.default:
        lines.append("the default instruction is the best on dev: keep it")
    else:
        key = result.metric
        gain = result.test["chosen"][key] - result.test["default"][key]
        p_key = p[key]
        verdict = (
            "better than the default on held-out queries"
            if gain > 0 and p_key < 0.05
            else "not shown better than the default on held-out queries (may be noise)"
        )
        lines.append(
            f"{tags[result.instruction]}: {key} {result.test['chosen'][key]:.4f} vs "
            f"{result.test['default'][key]:.4f} on test (p = {format_p(p_key)}): {verdict}"
        )
    return lines
