"""One worker thread per model: it owns the model's forwards and batches requests together.

Request handlers tokenize in their own threads (the tokenizers are read-only, see
:class:`~qwen3_rag.core.tokenization.SafeTokenizer`) and hand the ids to the model's worker as a
job. The worker never waits for a batch to fill: whenever it is free it plans the core's
token-budget batches over the rows of every queued job and runs the one batch that holds the
oldest job's next rows, so a lone request runs exactly the batches the in-process call runs (and
gets the same bits), while concurrent requests share forwards. Reranking keeps one query's
documents together, behind that query's shared-prefix cache; several rerank requests take turns
batch by batch, so a long one never holds a short one back for its whole length.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from qwen3_rag.core import Qwen3Embedder, Qwen3Reranker
from qwen3_rag.core.reranker import common_prefix_len

logger = logging.getLogger(__name__)


class QueueFullError(Exception):
    """The worker already holds ``max_queue`` requests (answered 503 with ``Retry-After``)."""


class ShuttingDownError(Exception):
    """The server is draining after SIGTERM and takes no new work."""


class JobCancelledError(Exception):
    """The request's client went away or its time ran out before its result was ready."""


@dataclass(eq=False)
class Job:
    """One request's rows for a worker, and the future its handler awaits."""

    rows: list[list[int]]
    future: Future[Any] = field(default_factory=Future)
    cancelled: bool = False
    enqueued: float = field(default_factory=time.monotonic)
    #: Filled by the worker: one output per row, in row order.
    outputs: list[torch.Tensor | None] = field(default_factory=list)
    remaining: int = 0

    @property
    def tokens(self) -> int:
        """Tokens the model sees for this job."""
        return sum(len(r) for r in self.rows)

    def cancel(self) -> None:
        """Drop this job: the worker skips its rows that have not run yet."""
        self.cancelled = True


@dataclass(eq=False)
class EmbedJob(Job):
    """Rows to embed; ``dimensions`` cuts each vector (MRL) before normalising.

    ``normalize=False`` (TEI's ``normalize``) returns the pooled states, only cut.
    """

    dimensions: int | None = None
    normalize: bool = True


@dataclass(eq=False)
class RerankJob(Job):
    """One query's pairs; the shared prefix is computed once, in the worker."""

    shared: int = 0
    cache: Any = None
    batches: list[list[int]] = field(default_factory=list)
    next_batch: int = 0
    started: bool = False


#: Hooks the app's metrics receive: (model kind, rows, tokens) per forward; queue depth.
BatchObserver = Callable[[str, int, int], None]
DepthObserver = Callable[[str, int], None]


class ModelWorker:
    """The thread that runs one model's forwards, and its bounded queue of jobs.

    Args:
        kind: ``"embedding"`` or ``"reranker"`` (names the thread and the metrics).
        max_queue: Most jobs admitted at once (running ones included); more raise
            :class:`QueueFullError`.
        max_batch_requests: Most requests whose rows share one forward; 1 runs each request
            on its own (the one-request-per-forward baseline).
        on_batch: Called after each forward with (kind, rows, tokens).
        on_depth: Called with (kind, jobs queued) whenever that number changes.
    """

    def __init__(
        self,
        kind: str,
        *,
        max_queue: int,
        max_batch_requests: int,
        on_batch: BatchObserver | None = None,
        on_depth: DepthObserver | None = None,
    ) -> None:
        self.kind = kind
        self.max_queue = max_queue
        self.max_batch_requests = max_batch_requests
        self._on_batch = on_batch or (lambda kind, rows, tokens: None)
        self._on_depth = on_depth or (lambda kind, depth: None)
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"qwen3-rag-{kind}", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs admitted and not finished."""
        return len(self._jobs)

    def submit(self, job: Job) -> Future[Any]:
        """Queue ``job``; its future gets the result (or the error of its forward).

        Raises:
            QueueFullError: If ``max_queue`` jobs are already waiting or running.
            ShuttingDownError: After :meth:`close`.
        """
        job.outputs = [None] * len(job.rows)
        job.remaining = len(job.rows)
        with self._cond:
            if self._stopping:
                raise ShuttingDownError("the server is shutting down")
            if len(self._jobs) >= self.max_queue:
                raise QueueFullError(f"the {self.kind} queue is full ({self.max_queue} requests)")
            self._jobs.append(job)
            self._on_depth(self.kind, len(self._jobs))
            self._cond.notify()
        return job.future

    def close(self, timeout: float | None = None) -> bool:
        """Take no new jobs, finish the queued ones, stop the thread; False if it timed out."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the loop --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._drop_cancelled()
                while not self._jobs and not self._stopping:
                    self._cond.wait()
                    self._drop_cancelled()
                if not self._jobs:
                    return  # stopping, and everything is done
                jobs = list(itertools.islice(self._jobs, self.max_batch_requests))
            try:
                finished = self._step(jobs)
            except BaseException as e:  # a failed forward fails the jobs it served, no others
                logger.error("%s forward failed: %s: %s", self.kind, type(e).__name__, e)
                finished = [(job, e) for job in self._failed_by(jobs)]
            with self._cond:
                for job, _ in finished:
                    if job in self._jobs:
                        self._jobs.remove(job)
                self._on_depth(self.kind, len(self._jobs))
            for job, result in finished:
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _drop_cancelled(self) -> None:
        gone = [job for job in self._jobs if job.cancelled]
        for job in gone:
            self._jobs.remove(job)
            if not job.future.done():
                job.future.set_exception(JobCancelledError("cancelled"))
        if gone:
            self._on_depth(self.kind, len(self._jobs))

    def _step(self, jobs: list[Job]) -> list[tuple[Job, Any]]:
        """Run one forward for ``jobs`` (oldest first); return the jobs it finished."""
        raise NotImplementedError

    def _failed_by(self, jobs: list[Job]) -> list[Job]:
        """The jobs an exception in :meth:`_step` belongs to."""
        return jobs


class EmbedWorker(ModelWorker):
    """Merges the rows of concurrent embedding requests into the core's token-budget batches."""

    def __init__(self, embedder: Qwen3Embedder, **kwargs: Any) -> None:
        self.embedder = embedder
        self._failing: list[Job] = []
        super().__init__("embedding", **kwargs)

    def _step(self, jobs: list[Job]) -> list[tuple[Job, Any]]:
        emb = self.embedder
        # Every row not yet run, oldest job first and in row order within a job.
        entries = [(job, i) for job in jobs for i, out in enumerate(job.outputs) if out is None]
        ids = [job.rows[i] for job, i in entries]
        lengths = [len(r) for r in ids]
        plan = emb.plan_batches(lengths)
        # The first batch holding a row of the oldest job. Greedy plans over length-sorted rows
        # split into runs that do not depend on each other, so a lone job runs exactly the
        # batches of the in-process call, one per step, in the same order.
        oldest = entries[0][0]
        batch = next(b for b in plan if any(entries[k][0] is oldest for k in b))
        touched: list[Job] = []
        for k in batch:
            if entries[k][0] not in touched:
                touched.append(entries[k][0])
        self._failing = touched
        rows = emb.run_batched(
            [lengths[k] for k in batch],
            lambda sub: list(emb.pool(ids, [batch[j] for j in sub]).unbind(0)),
            "embed",
        )
        self._on_batch(self.kind, len(batch), sum(lengths[k] for k in batch))
        for k, row in zip(batch, rows, strict=True):
            job, i = entries[k]
            job.outputs[i] = row
            job.remaining -= 1
        return [(job, self._finish(job)) for job in touched if job.remaining == 0]

    def _failed_by(self, jobs: list[Job]) -> list[Job]:
        # The jobs with rows in the failed forward; the others never saw it.
        return self._failing or jobs

    def _finish(self, job: Job) -> np.ndarray | BaseException:
        assert isinstance(job, EmbedJob)
        if not job.rows:
            return np.zeros((0, self.embedder.output_dimensions), dtype=np.float32)
        # Each row is normalised on its own, so cutting after the batch gives the bits the
        # in-process call gives.
        pooled = torch.stack(job.outputs)  # type: ignore[arg-type]
        try:
            if job.normalize:
                return self.embedder.finish(pooled, job.dimensions)
            cut = pooled[:, : job.dimensions or self.embedder.output_dimensions]
            self.embedder.check_finite(cut, "embeddings")
            return cut.cpu().numpy()
        except Exception as e:
            return e


class RerankWorker(ModelWorker):
    """Runs rerank requests batch by batch, taking turns; each query's prefix is shared."""

    def __init__(self, reranker: Qwen3Reranker, **kwargs: Any) -> None:
        self.reranker = reranker
        super().__init__("reranker", **kwargs)

    def _step(self, jobs: list[Job]) -> list[tuple[Job, Any]]:
        rr = self.reranker
        # Round robin: the job at the head runs one batch, then goes to the back.
        job = jobs[0]
        assert isinstance(job, RerankJob)
        if not job.started:
            job.started = True
            job.shared = common_prefix_len(job.rows) if rr.share_prefix else 0
            job.cache = rr.prefix_cache(job.rows[0][: job.shared]) if job.shared else None
            job.batches = rr.plan_batches([len(s) - job.shared for s in job.rows])
        batch = job.batches[job.next_batch]
        job.next_batch += 1
        lengths = [len(job.rows[i]) - job.shared for i in batch]
        scores = rr.run_batched(
            lengths,
            lambda sub: rr.forward_logits(job.rows, job.shared, job.cache, [batch[j] for j in sub]),
            "rerank",
        )
        self._on_batch(self.kind, len(batch), sum(lengths))
        for i, s in zip(batch, scores, strict=True):
            job.outputs[i] = s
        job.remaining -= len(batch)
        if job.remaining == 0:
            job.cache = None
            return [(job, self._finish(job))]
        with self._cond:
            if job in self._jobs:  # to the back of the line
                self._jobs.remove(job)
                self._jobs.append(job)
        return []

    def _failed_by(self, jobs: list[Job]) -> list[Job]:
        return jobs[:1]

    def _finish(self, job: Job) -> tuple[list[float], list[float]] | BaseException:
        # P(yes) and log-odds, exactly as the in-process score() computes them.
        try:
            return self.reranker.scores(torch.stack(job.outputs))  # type: ignore[arg-type]
        except Exception as e:
            return e
