"""Fine-tuning Qwen3-Embedding and Qwen3-Reranker on the inference inputs, with resumable runs.

Inputs are built by the runtime itself (:class:`~qwen3_rag.core.Qwen3Embedder` and
:class:`~qwen3_rag.core.Qwen3Reranker` tokenize the data), so a query is trained exactly as it
is later embedded: instruction template, truncation and final ``<|endoftext|>`` included;
documents carry no instruction. The embedder's loss is the paper's contrastive loss over the
whole batch through gradient caching (:mod:`.forward`); the reranker's is the log-probability of
"yes"/"no" at the answer position.

This module runs the loop; the tasks (tokenizing, loading, the loss) are in :mod:`.tasks`,
checkpoints and the training log in :mod:`.checkpoints`, the model folder's files in
:mod:`.model_files`.

A run writes into its output folder::

    OUTPUT/                       the fine-tuned model (a plain Hugging Face folder)
    OUTPUT/train_log.jsonl        one JSON object per step and per evaluation
    OUTPUT/checkpoints/step-N/    a model folder per checkpoint, with trainer_state/ to resume

Checkpoints are written to a temporary folder and renamed, so a kill at any moment leaves the
last complete one; ``resume=True`` continues from it with the same data order and random state,
giving the result an uninterrupted run gives.

Launched as several processes (``torchrun``, see :mod:`.distributed`), the run is data parallel:
``batch_size`` is the global batch, each process embeds its share of it, and the loss, the
false-negative mask and the update are those of one process holding the whole batch. Only the
first process (rank 0) writes files and evaluates. With ``fsdp`` the processes also split the
weights, gradients and optimizer state (:mod:`.sharding`), with the same result.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qwen3_rag.core.loading import resolve_device

from .checkpoints import (
    CHECKPOINTS,
    LOG_FILE,
    STATE_DIR,
    _append_log,
    _best_checkpoint,
    _complete_checkpoints,
    _fingerprint,
    _rewrite_log,
    restore_checkpoint,
    save_checkpoint,
)
from .distributed import process_group
from .model_files import _write_json
from .options import RESULT_OPTIONS, TrainingOptions
from .tasks import _EmbeddingTask, _RerankerTask, _Task

logger = logging.getLogger(__name__)

#: Options of the model runtime the training run honours (the rest do not apply to training).
RUNTIME_OPTIONS = ("device", "dtype", "revision", "cache_dir", "local_files_only")
#: Candidates per query that ``finetune_reranker``'s evaluation reranks: BM25's top 30.
EVAL_RERANK_DEPTH = 30


class TrainingInterrupted(Exception):
    """The caller asked the run to stop; the state up to the last step is checkpointed."""


@dataclass
class TrainResult:
    """What a fine-tuning run produced.

    Attributes:
        output: The fine-tuned model folder.
        steps: Optimizer steps taken in all (resumed steps included).
        loss: Loss of the last step (None if no step ran in this call).
        evaluations: ``{"step": ..., "metrics": {...}}`` for each held-out evaluation, the
            untrained model's (step 0) first.
        checkpoints: Checkpoint folders, oldest first.
    """

    output: Path
    steps: int
    loss: float | None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)


def finetune_embedder(
    data: str | os.PathLike[str] | Sequence[Any],
    *,
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    eval_data: str | os.PathLike[str] | None = None,
    resume: bool = False,
    options: TrainingOptions | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Fine-tune a Qwen3-Embedding model with the paper's contrastive loss.

    Args:
        data: Training data: a JSONL file (``{"query", "pos": [...], "neg": [...],
            "instruction"?}`` per line), a BEIR folder with a train split, or a list of
            :class:`~qwen3_rag.train.data.TrainExample`.
        model: Hub id or local folder of the embedding model to start from.
        output: Folder for the fine-tuned model, its checkpoints and its training log.
        eval_data: A BEIR folder evaluated (nDCG@10 and more, by :mod:`qwen3_rag.eval`) before
            training and at every checkpoint, at the evaluation's own ``max_length`` (the
            runtime's default) unless ``eval_max_length`` is given.
        resume: Continue from the last complete checkpoint in ``output``.
        options: A :class:`TrainingOptions`; keyword arguments override its fields.
        should_stop: Polled after every step; when it returns True the run checkpoints and
            raises :class:`TrainingInterrupted`.
        **kwargs: Fields of :class:`TrainingOptions`, and the runtime options ``device``,
            ``dtype``, ``revision``, ``cache_dir`` and ``local_files_only``.

    Returns:
        A :class:`TrainResult`; ``result.output`` loads with ``Qwen3Embedder``, transformers and
        sentence-transformers.

    Raises:
        ValueError: For bad data (naming the file and line), a bad option, or an output folder
            holding another run's checkpoints without ``resume``.
        TrainingInterrupted: When ``should_stop`` asked the run to stop.
    """
    return _Run(
        _EmbeddingTask, data, model, output, eval_data, resume, options, should_stop, kwargs
    ).run()


def finetune_reranker(
    data: str | os.PathLike[str] | Sequence[Any],
    *,
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    eval_data: str | os.PathLike[str] | None = None,
    resume: bool = False,
    options: TrainingOptions | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Fine-tune a Qwen3-Reranker: "yes" for each positive, "no" for each hard negative.

    The pair is the exact inference chat template; the loss is ``-log p(label)`` with ``p``
    the model's full-vocabulary probability at the answer position only. Arguments and result
    are those of :func:`finetune_embedder` (``negatives`` sets the "no" pairs per query); its
    ``eval_data`` is scored by reranking BM25's top :data:`EVAL_RERANK_DEPTH` of each query.
    """
    return _Run(
        _RerankerTask, data, model, output, eval_data, resume, options, should_stop, kwargs
    ).run()


# -- the run --------------------------------------------------------------------------------
def _check_fsdp(world: int) -> None:
    """Refuse ``fsdp`` where there is nothing to shard over: one process."""
    if world < 2:
        raise ValueError(
            f"fsdp=True (--fsdp) shards the model over the processes of a torchrun launch; "
            f"this run has {world} process (launch 'torchrun --nproc_per_node N ...', N >= 2)"
        )


class _Schedule:
    """Linear warm-up, then linear decay to zero (a picklable-free LambdaLR factor)."""

    def __init__(self, warmup: int, total: int) -> None:
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        return max(0.0, (self.total - step) / max(1, self.total - self.warmup))


class _Run:
    def __init__(
        self,
        task_cls: type[_Task],
        data: Any,
        model: str | os.PathLike[str],
        output: str | os.PathLike[str],
        eval_data: Any,
        resume: bool,
        options: TrainingOptions | None,
        should_stop: Callable[[], bool] | None,
        kwargs: dict[str, Any],
    ) -> None:
        runtime = {k: kwargs.pop(k) for k in list(kwargs) if k in RUNTIME_OPTIONS}
        self.options = (options or TrainingOptions()).replace(**kwargs)
        self.runtime = runtime
        self.group, self.device = process_group(resolve_device(runtime.get("device")))
        self.task = task_cls(model, runtime, self.options, self.device)
        self.model_ref = model
        self.data = data
        self.output = Path(output)
        self.eval_data = eval_data
        self.resume = resume
        self.should_stop = should_stop or (lambda: False)
        self.checkpoints = self.output / CHECKPOINTS
        self.log_path = self.output / LOG_FILE
        self._candidates: Any = None  # the reranker evaluation's BM25 run, made once

    # -- set-up ----------------------------------------------------------------------------
    def _examples(self) -> list[Any]:
        if isinstance(self.data, (str, os.PathLike)):
            from .data import load_training_data

            return list(load_training_data(self.data))
        return list(self.data)

    def _eval_dataset(self) -> Any:
        if self.eval_data is None:
            if self.options.keep_best is not None:
                raise ValueError(
                    f"keep_best={self.options.keep_best!r} needs eval_data (--eval) to rank "
                    "the checkpoints by"
                )
            return None
        from qwen3_rag.eval import load_beir

        return load_beir(self.eval_data)

    def _check_output(self) -> list[Path]:
        existing = _complete_checkpoints(self.checkpoints)
        if existing and not self.resume:
            raise ValueError(
                f"output {str(self.output)!r} holds checkpoints of an earlier run; pass "
                "resume=True (--resume) to continue it, or choose another output folder"
            )
        if self.output.exists() and not self.output.is_dir():
            raise ValueError(f"output {str(self.output)!r} is a file; name a folder")
        return existing

    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:
            self.group.close()

    def _run(self) -> TrainResult:
        opts, group = self.options, self.group
        if opts.keep_best is not None and opts.merge_last >= 2:
            raise ValueError(
                "keep_best and merge_last choose the output two ways; pass one of them"
            )
        if opts.fsdp:
            _check_fsdp(group.world)
        existing = self._check_output()
        examples = self._examples()
        if not examples:
            raise ValueError("the training data holds no instances")
        dataset = self._eval_dataset()
        self.task.tokenize(self.model_ref, examples)
        task = self.task
        if task.kind == "reranker" and (
            opts.negatives == 0 or not any(i.neg for i in task.instances)
        ):
            raise ValueError(
                "the reranker needs hard negatives: give instances a 'neg' list (its "
                'documents become the "no" pairs) and negatives >= 1'
            )
        short = sum(len(i.neg) < opts.negatives for i in task.instances)
        if short:
            logger.info(
                "%d of %d instances have fewer than negatives=%d hard negatives: each trains "
                "with the ones it has (the loss leaves the missing slots out)",
                short,
                len(task.instances),
                opts.negatives,
            )
        fingerprint = _fingerprint(task.table, task.instances)
        per_epoch = math.ceil(len(task.instances) / opts.batch_size)
        total = opts.max_steps or opts.epochs * per_epoch
        gc.collect()  # the tokenizing runtime's weights go before the trainable ones load
        torch.manual_seed(opts.seed)  # the same LoRA initialisation in every process
        task.load()
        if opts.fsdp:
            task.shard(group)  # before the optimizer: it steps on this process's slices
        params = [p for p in task.trainable.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=opts.learning_rate, weight_decay=opts.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _Schedule(round(opts.warmup_ratio * total), total)
        )
        identity = {
            "kind": task.kind,
            "data": fingerprint,
            "options": {k: opts.to_dict()[k] for k in RESULT_OPTIONS},
        }
        start, evaluations = 0, list[dict[str, Any]]()
        if existing:
            start, evaluations = restore_checkpoint(
                existing[-1],
                identity,
                optimizer,
                scheduler,
                task=task,
                group=group,
                log_path=self.log_path,
            )
        else:
            if self.resume:
                logger.warning("no checkpoint in %s: starting from the beginning", self.output)
            if group.main:
                self.output.mkdir(parents=True, exist_ok=True)
                # No checkpoint: whatever an earlier start logged (step 0's evaluation, steps
                # a kill cut short) is redone, so it goes.
                _rewrite_log(self.log_path, -1)
        if dataset is not None and not any(e["step"] == 0 for e in evaluations):
            evaluations.append(self._evaluate(None, dataset, 0))
        loss: float | None = None
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            initial=start,
            desc=f"finetune {task.kind}",
            unit="step",
            disable=not opts.show_progress or not group.main,
        )
        started = time.perf_counter()
        tokens_done = 0
        saved = [p for p in existing]
        per_process = -(-opts.batch_size // group.world)  # the largest share of a full batch
        try:
            for step in range(start, total):
                epoch, index = divmod(step, per_epoch)
                order = list(range(len(task.instances)))
                random.Random(f"{opts.seed}:epoch:{epoch}").shuffle(order)
                batch = [
                    task.instances[i]
                    for i in order[index * opts.batch_size : (index + 1) * opts.batch_size]
                ]
                t0 = time.perf_counter()
                lr = scheduler.get_last_lr()[0]
                loss, tokens = task.step(batch, random.Random(f"{opts.seed}:step:{step}"), group)
                if not task.sharded:  # FSDP's reduce-scatter has added them up already
                    group.sum_gradients(params)
                if opts.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                seconds = time.perf_counter() - t0
                tokens_done += tokens
                record = {
                    "step": step + 1,
                    "epoch": round((step + 1) / per_epoch, 4),  # epochs done after this step
                    "loss": loss,
                    "learning_rate": lr,
                    "tokens": tokens,
                    "tokens_per_second": round(tokens / seconds, 1),
                    "seconds": round(seconds, 3),
                    "world_size": group.world,
                    "batch_per_process": per_process,
                    "fsdp": task.sharded,
                }
                if group.main:
                    _append_log(self.log_path, record)
                bar.set_postfix(
                    loss=f"{loss:.4f}", tok_s=f"{tokens_done / (time.perf_counter() - started):.0f}"
                )
                bar.update(1)
                stop = group.any(self.should_stop(), self.device)
                due = opts.save_steps is not None and (step + 1) % opts.save_steps == 0
                if due or stop or step + 1 == total:
                    path = save_checkpoint(
                        self.checkpoints,
                        step + 1,
                        identity,
                        optimizer,
                        scheduler,
                        evaluations,
                        task=task,
                        group=group,
                    )
                    saved.append(path)
                    if dataset is not None:
                        evaluations.append(self._evaluate(path, dataset, step + 1))
                        if group.main:
                            _write_json(path / STATE_DIR / "evaluations.json", evaluations)
                if stop and step + 1 < total:
                    raise TrainingInterrupted(
                        f"stopped after step {step + 1} of {total}; checkpoint {path}"
                    )
        finally:
            bar.close()
        if not saved:  # resumed a run that had already finished
            saved = _complete_checkpoints(self.checkpoints)
        if group.main:
            self._write_output(saved, evaluations)
        group.barrier()  # every process returns once the output is complete
        if opts.merge_last >= 2 and dataset is not None:
            evaluations.append(self._evaluate(self.output, dataset, total, merged=True))
        return TrainResult(self.output, total, loss, evaluations, saved)

    def _evaluate(
        self, folder: Path | None, dataset: Any, step: int, merged: bool = False
    ) -> dict[str, Any]:
        """Held-out metrics of ``folder`` (None: the base model), computed once, by rank 0."""
        record: dict[str, Any] | None = None
        if self.group.main:
            metrics = self._metrics(self.model_ref if folder is None else folder, dataset)
            record = {"step": step, "metrics": metrics, **({"merged": True} if merged else {})}
            _append_log(
                self.log_path,
                {"step": step, "eval": metrics, **({"merged": True} if merged else {})},
            )
            logger.info(
                "evaluation at step %d: %s",
                step,
                ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
            )
        shared: dict[str, Any] = self.group.share(record)
        return shared

    def _metrics(self, model: str | os.PathLike[str], dataset: Any) -> dict[str, float]:
        from qwen3_rag.eval import DEFAULT_METRICS, bm25_run, compute_metrics, rerank_run
        from qwen3_rag.eval.metrics import parse_metrics

        opts = self.options
        names = parse_metrics(
            [*DEFAULT_METRICS, *([opts.keep_best] if opts.keep_best is not None else [])]
        )
        # The evaluation's own max_length (that of `qwen3-rag eval`), unless asked otherwise:
        # the training length is a memory choice, and would make the rows differ from eval's.
        settings: dict[str, Any] = dict(
            device=str(self.device),
            show_progress=False,
            instruction=self.task.instruction,
            **{k: v for k, v in self.runtime.items() if k != "device"},
        )
        if opts.eval_max_length is not None:
            settings["max_length"] = opts.eval_max_length
        if self.task.kind == "reranker":
            from qwen3_rag.core import Qwen3Reranker

            if self._candidates is None:
                self._candidates = bm25_run(dataset, EVAL_RERANK_DEPTH)
            reranker = Qwen3Reranker(model, **settings)
            run = rerank_run(reranker, dataset, self._candidates, EVAL_RERANK_DEPTH)
            del reranker
            return compute_metrics(dataset.qrels, run, names)
        from qwen3_rag.core import Qwen3Embedder
        from qwen3_rag.eval import evaluate_embedder

        embedder = Qwen3Embedder(model, **settings)
        metrics = evaluate_embedder(embedder, dataset, metrics=names)
        del embedder
        return metrics

    def _write_output(self, saved: list[Path], evaluations: list[dict[str, Any]]) -> None:
        """The final model: the last checkpoint, the best one, or a slerp of the last ones."""
        tmp = self.output / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        k = self.options.merge_last
        if k >= 2:
            if len(saved) < k:
                raise ValueError(
                    f"merge_last={k} needs {k} checkpoints; the run saved "
                    f"{len(saved)} (lower save_steps)"
                )
            from .merge import slerp_merge

            slerp_merge([str(p) for p in saved[-k:]], out=tmp)
        else:
            chosen = saved[-1]
            metric = self.options.keep_best
            if metric is not None:
                chosen, value = _best_checkpoint(saved, evaluations, metric)
                last = int(saved[-1].name.split("-")[1])
                _append_log(
                    self.log_path,
                    {"step": last, "kept": chosen.name, "metric": metric, "value": value},
                )
                logger.info("output: %s, the best %s (%.4f)", chosen.name, metric, value)
            shutil.copytree(chosen, tmp, ignore=shutil.ignore_patterns(STATE_DIR))
        for item in tmp.iterdir():
            target = self.output / item.name
            if target.is_dir():
                shutil.rmtree(target)
            os.replace(item, target)
        tmp.rmdir()
