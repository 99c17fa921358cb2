"""Data-parallel fine-tuning: 2 processes under torchrun (gloo, CPU) train as 1 process does.

The command is the documented one, ``python -m torch.distributed.run --nproc_per_node 2 -m
qwen3_rag finetune ...``, with ``--batch-size`` the global batch; the reference is one process
in this test's interpreter with the same global batch and gradient caching (chunks far smaller
than a batch). The data are real pairs (standard-library docstrings and function sources) with
hard negatives per instance (3, 1 or none), three instances sharing another one's positive (the
duplicate mask, across processes), ``--margin 0`` (the score mask fires on many terms), and a
step with one instance (the second process has nothing to embed).
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qwen3_rag.train.distributed import Group
from qwen3_rag.train.trainer import finetune_embedder, finetune_reranker

FLAGS = {
    "max_steps": 3,
    "batch_size": 12,  # 13 instances: steps of 12, 1, 12 (a new epoch)
    "negatives": 2,
    "max_length": 64,
    "margin": 0.0,
    "seed": 3,
}


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pairs = []
    for module in (json, textwrap, inspect):
        for _, fn in inspect.getmembers(module, inspect.isfunction):
            doc = inspect.getdoc(fn)
            if doc and fn.__module__ == module.__name__:
                pairs.append((doc.splitlines()[0], inspect.getsource(fn)[:200]))
    pairs = pairs[:13]
    rows = []
    for i, (query, source) in enumerate(pairs):
        positive = source if i < 10 else pairs[i - 10][1]  # 10-12 share 0-2's positives
        # Never the instance's own positive: a tie with it would put the margin-0 mask on a
        # rounding coin toss.
        negatives = [pairs[(i + j) % len(pairs)][1] for j in (4, 5, 6)]
        count = {4: 0, 5: 1}.get(i, 3)  # per instance: none, one, or more than --negatives
        rows.append({"query": query, "pos": [positive], "neg": negatives[:count]})
    path = tmp_path_factory.mktemp("pairs") / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _torchrun_cmd(kind: str, data: Path, model: str, out: Path, options: dict) -> list[str]:
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "qwen3_rag.cli",  # the module form of the command (`-m qwen3_rag` works alike)
        "finetune",
        kind,
        str(data),
        "--model",
        model,
        "--output",
        str(out),
        "-q",
        *flags,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun(kind: str, data: Path, model: str, out: Path, options: dict) -> None:
    cmd = _torchrun_cmd(kind, data, model, out, options)
    proc = subprocess.run(cmd, capture_output=True, env=ENV, timeout=200)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    lines = proc.stdout.decode().splitlines()
    assert len([line for line in lines if line.startswith("fine-tuned")]) == 1, lines  # rank 0


def _same_run(one: Path, two: Path, base: str, steps: int = 3) -> None:
    """Same losses step by step, same final weights (float32 sums in another order aside)."""
    logs = [[json.loads(line) for line in (d / "train_log.jsonl").open()] for d in (one, two)]
    assert [r["step"] for r in logs[1]] == list(range(1, steps + 1))  # once, by rank 0
    assert {r["world_size"] for r in logs[1]} == {2}
    assert {r["batch_per_process"] for r in logs[1]} == {6}
    assert {r["world_size"] for r in logs[0]} == {1}
    assert [r["tokens"] for r in logs[1]] == [r["tokens"] for r in logs[0]]
    assert [r["loss"] for r in logs[1]] == pytest.approx(
        [r["loss"] for r in logs[0]], rel=1e-4, abs=1e-5
    )
    a = load_file(str(one / "model.safetensors"))
    b = load_file(str(two / "model.safetensors"))
    start = load_file(str(Path(base) / "model.safetensors"))
    assert a.keys() == b.keys()
    moved = max(float((a[n] - start[n]).abs().max()) for n in a)
    gap = max(float((a[n] - b[n]).abs().max()) for n in a)
    # Measured: the updates reach ~7e-3, the two runs differ by ~2e-7.
    assert moved > 1e-3 and gap < 1e-3 * moved, (moved, gap)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("lora_rank", [4, 0], ids=["lora", "full"])
def test_two_processes_train_the_embedder_as_one_process_with_their_global_batch(
    tmp_path: Path, pairs_file: Path, embed_eos_path: str, lora_rank: int
):
    options = {**FLAGS, "lora_rank": lora_rank, "learning_rate": 1e-3}
    finetune_embedder(
        pairs_file,
        model=embed_eos_path,
        output=tmp_path / "one",
        chunk_tokens=200,  # gradient caching: each step's ~2,000 tokens in about 10 chunks
        show_progress=False,
        **options,
    )
    _torchrun("embedder", pairs_file, embed_eos_path, tmp_path / "two", options)
    _same_run(tmp_path / "one", tmp_path / "two", embed_eos_path)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_train_the_reranker_as_one_process_with_their_global_batch(
    tmp_path: Path, pairs_file: Path, reranker_path: str
):
    options = {**FLAGS, "lora_rank": 4, "learning_rate": 1e-3, "max_length": 160}
    finetune_reranker(
        pairs_file,
        model=reranker_path,
        output=tmp_path / "one",
        chunk_tokens=300,
        show_progress=False,
        **options,
    )
    _torchrun("reranker", pairs_file, reranker_path, tmp_path / "two", options)
    _same_run(tmp_path / "one", tmp_path / "two", reranker_path)


def _workers(launcher: int) -> dict[int, int]:
    """RANK -> pid of the processes that torchrun (pid ``launcher``) started."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0") if ppid == launcher else []
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        for item in env:
            if item.startswith(b"RANK="):
                found[int(item[5:])] = int(entry.name)
    return found


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_run_killed_on_one_rank_resumes_on_two_to_the_uninterrupted_weights(
    tmp_path: Path, pairs_file: Path, embed_eos_path: str
):
    options = {
        **FLAGS,
        "max_steps": 12,
        "save_steps": 3,
        "lora_rank": 4,
        "learning_rate": 1e-3,
        "chunk_tokens": 256,  # gradient caching in each process: steps long enough to kill in
    }
    finetune_embedder(
        pairs_file, model=embed_eos_path, output=tmp_path / "one", show_progress=False, **options
    )
    out = tmp_path / "two"
    cmd = _torchrun_cmd("embedder", pairs_file, embed_eos_path, out, options)
    launch = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    first = out / "checkpoints" / "step-0000003"
    deadline = time.monotonic() + 150
    while not first.exists():
        assert launch.poll() is None, launch.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(_workers(launch.pid)[1], signal.SIGKILL)  # rank 1, mid-run
    launch.communicate(timeout=120)
    assert launch.returncode != 0  # torchrun ends the other rank and fails
    assert not (out / "checkpoints" / "step-0000012").exists()
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, env=ENV, timeout=200)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    _same_run(tmp_path / "one", out, embed_eos_path, steps=12)


def test_a_batch_is_split_in_contiguous_near_equal_shares():
    assert Group(0, 2).split(13) == [range(0, 7), range(7, 13)]
    assert Group(1, 3).split(2) == [range(0, 1), range(1, 2), range(2, 2)]
    assert Group().split(5) == [range(0, 5)]


def test_one_process_group_gathers_and_sums_nothing():
    x = torch.ones(2, 3, requires_grad=True)
    assert Group().gather(x, [2]) is x
    assert Group().sum(1.5, torch.device("cpu")) == 1.5
