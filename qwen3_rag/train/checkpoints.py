"""A run's saved state: its checkpoints and its training log.

A checkpoint, ``checkpoints/step-N/``, is a model folder with ``trainer_state/``: the trainable
weights, the optimizer and scheduler state, each process's generator state, the run's identity
and its evaluations. It is written to a temporary folder, flushed and renamed, so a kill at any
moment leaves the last complete one. The log holds one JSON object per step and per evaluation.
A sharded run (``fsdp``) gathers its full weights and optimizer state into rank 0 first, so its
checkpoints are the same plain folders (the optimizer state keyed by parameter name).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qwen3_rag.datafiles import write_atomic

from .distributed import Group
from .model_files import _write_json

if TYPE_CHECKING:
    from .tasks import _Instance, _Task

logger = logging.getLogger(__name__)

LOG_FILE = "train_log.jsonl"
CHECKPOINTS = "checkpoints"
STATE_DIR = "trainer_state"
_STATE_VERSION = 2


def save_checkpoint(
    root: Path,
    step: int,
    identity: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    evaluations: list[dict[str, Any]],
    *,
    task: _Task,
    group: Group,
) -> Path:
    """Write checkpoint ``step``: rank 0 the model and the state, every rank its RNG state.

    Every process calls it (it synchronizes them).

    Args:
        root: The run's checkpoints folder.
        step: Optimizer steps taken.
        identity: The run's model kind, data fingerprint and result-changing options, which a
            resume must match.
        optimizer: The optimizer, whose state is saved.
        scheduler: The learning-rate scheduler, whose state is saved.
        evaluations: The held-out evaluations so far.
        task: The task holding the model.
        group: The run's processes.

    Returns:
        The complete checkpoint folder ``root/step-N``.
    """
    from safetensors.torch import save_file

    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp"
    state = tmp / STATE_DIR
    full: dict[str, torch.Tensor] | None = None
    optim: dict[str, Any] = {}
    if task.sharded:  # every process sends its slices; rank 0 gets the whole
        from .sharding import full_state

        full, optim = full_state(task.trainable, optimizer)
    if group.main:  # unsharded, the processes hold the same weights and optimizer state
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        task.export(tmp, full)
        state.mkdir()
        trained = [n for n, p in task.trainable.named_parameters() if p.requires_grad]
        if full is not None:
            weights = {n: full[n].contiguous() for n in trained}
        else:
            optim = optimizer.state_dict()
            params = dict(task.trainable.named_parameters())
            weights = {n: params[n].detach().contiguous().cpu() for n in trained}
        save_file(weights, str(state / "trainable.safetensors"))
        torch.save(
            {"optimizer": optim, "scheduler": scheduler.state_dict()}, state / "optimizer.pt"
        )
        _write_json(
            state / "state.json",
            {
                "version": _STATE_VERSION,
                "step": step,
                "world_size": group.world,
                "sharded": task.sharded,
                **identity,
            },
        )
        _write_json(state / "evaluations.json", evaluations)
    group.barrier()
    # Dropout draws differ per process: each one's generator state resumes it.
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    torch.save({"rng": torch.get_rng_state(), "cuda_rng": cuda}, state / _rng_file(group))
    group.barrier()
    if group.main:
        _fsync_tree(tmp)
        if final.exists():  # a resumed run that redoes a step after a crash mid-rename
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("checkpoint %s", final)
    group.barrier()
    return final


def restore_checkpoint(
    path: Path,
    identity: dict[str, Any],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    *,
    task: _Task,
    group: Group,
    log_path: Path,
) -> tuple[int, list[dict[str, Any]]]:
    """Load checkpoint ``path`` into the task, the optimizer, the scheduler and the generators.

    Args:
        path: A complete checkpoint folder.
        identity: This run's identity (see :func:`save_checkpoint`).
        optimizer: The optimizer to load the saved state into.
        scheduler: The scheduler to load the saved state into.
        task: The task whose trainable weights are loaded.
        group: The run's processes.
        log_path: The training log, cut back to the checkpoint's step (by rank 0).

    Returns:
        The checkpoint's step and the evaluations made up to it.

    Raises:
        ValueError: The model kind, the data or a result-changing option differs from the
            checkpoint's run.
    """
    from safetensors.torch import load_file

    state = json.loads((path / STATE_DIR / "state.json").read_text(encoding="utf-8"))
    for key in ("kind", "data"):
        if state.get(key) != identity[key]:
            what = "model kind" if key == "kind" else "training data (or its tokenization)"
            raise ValueError(f"cannot resume from {path}: the {what} differs from that run's")
    before = state["options"]
    changed = [k for k, v in identity["options"].items() if before.get(k) != v]
    if changed:
        was = ", ".join(f"{k}={before.get(k)!r}" for k in changed)
        raise ValueError(
            f"cannot resume from {path}: option(s) {', '.join(changed)} differ from that "
            f"run's ({was})"
        )
    if bool(state.get("sharded", False)) != task.sharded:
        # The two keep the optimizer state differently (by parameter name when sharded).
        raise ValueError(
            f"cannot resume from {path}: that run had fsdp={bool(state.get('sharded'))}, this "
            f"one fsdp={task.sharded}; resume with the same --fsdp setting"
        )
    weights = load_file(str(path / STATE_DIR / "trainable.safetensors"))
    saved = torch.load(path / STATE_DIR / "optimizer.pt", weights_only=True, map_location="cpu")
    if task.sharded:
        from .sharding import load_full_state

        load_full_state(task.trainable, optimizer, weights, saved["optimizer"])
    else:
        params = dict(task.trainable.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng_path = path / STATE_DIR / _rng_file(group)
    # Version 1 checkpoints (one process) kept the generator state with the optimizer's.
    rng = saved if "rng" in saved else None
    if rng_path.is_file():
        rng = torch.load(rng_path, weights_only=True, map_location="cpu")
    if rng is not None:
        torch.set_rng_state(rng["rng"])
        if rng["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda_rng"])
    else:
        # Only dropout draws from it; the data order and the negatives do not.
        logger.warning(
            "%s was written by %s processes, this run has %d: dropout draws differ from an "
            "uninterrupted run's (the data order and the sampled negatives do not)",
            path,
            state.get("world_size", 1),
            group.world,
        )
    step = int(state["step"])
    if group.main:
        _rewrite_log(log_path, step)
    evaluations = json.loads((path / STATE_DIR / "evaluations.json").read_text("utf-8"))
    logger.info("resuming from %s (step %d)", path, step)
    return step, [e for e in evaluations if e["step"] <= step]


def _rng_file(group: Group) -> str:
    return f"rng-{group.rank}.pt"


def _best_checkpoint(
    saved: list[Path], evaluations: list[dict[str, Any]], metric: str
) -> tuple[Path, float]:
    """The checkpoint whose held-out ``metric`` is highest (the earliest of equals)."""
    by_step = {int(p.name.split("-")[1]): p for p in saved}
    scored = [
        (e["metrics"][metric], -e["step"])
        for e in evaluations
        if e["step"] in by_step and not e.get("merged")
    ]
    if not scored:
        raise ValueError(f"keep_best={metric!r}: no checkpoint of this run was evaluated")
    value, step = max(scored)
    return by_step[-step], float(value)


def _complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoints (renamed from their temporary name), oldest first."""
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("step-") and (p / STATE_DIR / "state.json").is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _fingerprint(table: list[list[int]], instances: list[_Instance]) -> str:
    digest = hashlib.sha256()
    for row in table:
        digest.update(json.dumps(row).encode())
    for inst in instances:
        digest.update(json.dumps([inst.query, inst.pos, inst.neg]).encode())
    return digest.hexdigest()


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _rewrite_log(path: Path, step: int) -> None:
    """Keep the log's records up to ``step`` (those after it are redone on resume)."""
    kept: list[str] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError):
                continue  # a line cut by the kill
    write_atomic(path, [line + "\n" for line in kept])


def _fsync_tree(root: Path) -> None:
    """Flush a checkpoint's files before its rename makes it count as complete."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
