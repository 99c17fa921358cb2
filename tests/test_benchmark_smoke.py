"""A small run of benchmarks/bench.py: the script works and the three systems agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_benchmark_smoke_run(tmp_path):
    report_path = tmp_path / "report.json"
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench.py"),
            "--smoke",
            "--device",
            "cpu",
            "--work",
            str(tmp_path / "models"),
            "--json",
            str(report_path),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert set(report["embedding"]) == {"qwen3-rag", "sentence-transformers", "model card"}
    for row in report["embedding"].values():
        assert row["tokens_per_s"] > 0 and row["min_cosine_vs_ours"] >= 0.9999
    for row in report["reranking"].values():
        assert row["pairs_per_s"] > 0 and row["max_abs_score_diff_vs_ours"] <= 1e-4
    assert "| qwen3-rag |" in out.stdout
    # The precision comparison: this library in float32 and bfloat16, with the CPU's flags.
    rows = report["precision"]["rows"]
    assert list(rows) == ["float32", "bfloat16"]
    assert rows["bfloat16"]["min_cosine"] >= 0.999 and rows["bfloat16"]["gemm_gflops"] > 0
    assert rows["bfloat16"]["top10_agreement"] <= report["precision"]["top_k"]
    assert "native bfloat16:" in out.stdout and "| bfloat16 |" in out.stdout
