"""Sharded fine-tuning (``--fsdp``): 2 processes under torchrun (gloo, CPU) train as 1 process does.

The reference is one unsharded process with the same global batch and gradient caching; the
sharded launch splits every weight, gradient and AdamW moment over its 2 processes (FSDP2). The
data and the comparison are those of ``test_train_distributed.py``: hard negatives (3, 1 or none
per instance), shared positives, ``--margin 0``, and a step of one instance, where the second
process has no rows and only pads the first one's forwards and backwards. Gradient caching in
chunks of 150 tokens gives the processes 8 and 9 chunks in the full steps and 2 and 0 in the
one-instance step, so both kinds of padding pass run; the resume test's 256 gives 4 and 5, and
1 and 0 (the single-chunk path). The reranker's pairs (~130 tokens) in chunks of 300 tokens
give 8 and 9 chunks, and 2 and 0: its short share pads with one-token passes too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import test_train_distributed
from safetensors.torch import load_file
from test_train_distributed import ENV, FLAGS, _same_run, _torchrun_cmd, _workers

from qwen3_rag.train.trainer import finetune_embedder, finetune_reranker

pairs_file = test_train_distributed.pairs_file  # the same data (a module fixture)


def _sharded_torchrun(
    data: Path,
    model: str,
    out: Path,
    options: dict,
    extra: tuple[str, ...] = (),
    kind: str = "embedder",
) -> None:
    cmd = [*_torchrun_cmd(kind, data, model, out, options), "--fsdp", *extra]
    proc = subprocess.run(cmd, capture_output=True, env=ENV, timeout=200)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    lines = proc.stdout.decode().splitlines()
    assert len([line for line in lines if line.startswith("fine-tuned")]) == 1, lines  # rank 0


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "train_log.jsonl").open()]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("lora_rank", "extra"),
    # LoRA with activation checkpointing too (it re-runs each layer's forward, gathering again).
    [(4, ("--gradient-checkpointing",)), (0, ())],
    ids=["lora-checkpointing", "full"],
)
def test_sharded_processes_train_the_embedder_as_one_process_with_their_global_batch(
    tmp_path: Path, pairs_file: Path, embed_eos_path: str, lora_rank: int, extra: tuple[str, ...]
):
    options = {**FLAGS, "lora_rank": lora_rank, "learning_rate": 1e-3, "chunk_tokens": 150}
    finetune_embedder(
        pairs_file, model=embed_eos_path, output=tmp_path / "one", show_progress=False, **options
    )
    _sharded_torchrun(pairs_file, embed_eos_path, tmp_path / "two", options, extra)
    assert {r["fsdp"] for r in _log(tmp_path / "two")} == {True}
    assert {r["fsdp"] for r in _log(tmp_path / "one")} == {False}
    _same_run(tmp_path / "one", tmp_path / "two", embed_eos_path)
    # The resumable state is gathered whole, under the unsharded parameter names.
    saved = [
        load_file(
            str(d / "checkpoints" / "step-0000003" / "trainer_state" / "trainable.safetensors")
        )
        for d in (tmp_path / "one", tmp_path / "two")
    ]
    assert saved[0].keys() == saved[1].keys()
    assert max(float((saved[0][n] - saved[1][n]).abs().max()) for n in saved[0]) < 1e-5


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_sharded_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, pairs_file: Path, embed_eos_path: str
):
    options = {
        **FLAGS,
        "max_steps": 4,
        "save_steps": 2,
        "lora_rank": 0,  # the whole AdamW state, sharded, saved whole and sharded back
        "learning_rate": 1e-3,
        "chunk_tokens": 256,  # gradient caching: steps long enough to kill in
    }
    # The reference is an uninterrupted sharded run: against one process, full fine-tuning's
    # AdamW turns float32 rounding into gaps of ~2e-3 of the update after 4 steps (plain data
    # parallel shows the same), which would hide a resume that is slightly off.
    _sharded_torchrun(pairs_file, embed_eos_path, tmp_path / "one", options)
    out = tmp_path / "two"
    cmd = [*_torchrun_cmd("embedder", pairs_file, embed_eos_path, out, options), "--fsdp"]
    launch = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    first = out / "checkpoints" / "step-0000002"
    deadline = time.monotonic() + 150
    while not first.exists():
        assert launch.poll() is None, launch.communicate()[1].decode()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(_workers(launch.pid)[1], signal.SIGKILL)  # rank 1, mid-run
    launch.communicate(timeout=120)
    assert launch.returncode != 0
    assert not (out / "checkpoints" / "step-0000004").exists()
    # Its optimizer state is keyed by name: an unsharded run refuses it.
    with pytest.raises(ValueError, match=r"had fsdp=True, this one fsdp=False"):
        finetune_embedder(
            pairs_file,
            model=embed_eos_path,
            output=out,
            resume=True,
            show_progress=False,
            **options,
        )
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, env=ENV, timeout=200)
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    logs = [_log(tmp_path / "one"), _log(out)]
    assert [r["step"] for r in logs[1]] == [1, 2, 3, 4]
    assert [r["loss"] for r in logs[1]] == pytest.approx([r["loss"] for r in logs[0]], abs=1e-7)
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(out / "model.safetensors"))
    start = load_file(str(Path(embed_eos_path) / "model.safetensors"))
    assert a.keys() == b.keys()
    moved = max(float((a[n] - start[n]).abs().max()) for n in a)
    gap = max(float((a[n] - b[n]).abs().max()) for n in a)
    # Measured: the updates reach ~2e-3; the resumed weights equal the uninterrupted ones (0.0).
    assert moved > 1e-3 and gap <= 1e-7, (moved, gap)


def test_fsdp_needs_several_processes(tmp_path: Path, pairs_file: Path, embed_eos_path: str):
    with pytest.raises(ValueError, match=r"fsdp=True \(--fsdp\).*this run has 1 process"):
        finetune_embedder(
            pairs_file, model=embed_eos_path, output=tmp_path / "o", fsdp=True, max_steps=1
        )
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("lora_rank", "reranker"),
    [(0, "reranker_path"), (4, "reranker_path"), (0, "reranker_untied_path")],
    ids=["full-tied", "lora-tied", "full-untied"],
)
def test_sharded_processes_train_the_reranker_as_one_process_with_their_global_batch(
    tmp_path: Path, pairs_file: Path, request: pytest.FixtureRequest, lora_rank: int, reranker: str
):
    # The answer head is read inside the root unit's forward: tied to the sharded embedding
    # table (trained through both uses) or a weight of its own.
    model = request.getfixturevalue(reranker)
    options = {
        **FLAGS,
        "lora_rank": lora_rank,
        "learning_rate": 1e-3,
        "max_length": 160,
        # Pairs of ~130 tokens: the processes run 8 and 9 chunks in the full steps, 2 and 0
        # in the one-instance step, so the short share pads in both.
        "chunk_tokens": 300,
    }
    finetune_reranker(
        pairs_file, model=model, output=tmp_path / "one", show_progress=False, **options
    )
    _sharded_torchrun(pairs_file, model, tmp_path / "two", options, kind="reranker")
    assert {r["fsdp"] for r in _log(tmp_path / "two")} == {True}
    _same_run(tmp_path / "one", tmp_path / "two", model)
    # The output is the base model's layout: a tied head is saved once, as the embeddings.
    a = load_file(str(tmp_path / "two" / "model.safetensors"))
    base = load_file(str(Path(model) / "model.safetensors"))
    assert a.keys() == base.keys()
    # The resumable state is gathered whole, under the unsharded parameter names.
    saved = [
        load_file(
            str(d / "checkpoints" / "step-0000003" / "trainer_state" / "trainable.safetensors")
        )
        for d in (tmp_path / "one", tmp_path / "two")
    ]
    assert saved[0].keys() == saved[1].keys()
    # Measured: 5e-7 (full, tied), 3e-8 (LoRA), 1.4e-6 (full, untied) for updates of ~2e-3.
    assert max(float((saved[0][n] - saved[1][n]).abs().max()) for n in saved[0]) < 1e-5
