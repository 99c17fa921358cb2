"""The batching workers in-process (fast): requests merge into shared forwards, in order."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import CORPUS


@pytest.fixture(scope="module")
def emb(embed_eos_path):
    from qwen3_rag.core import Qwen3Embedder

    return Qwen3Embedder(embed_eos_path, max_length=64, show_progress=False)


def _jobs(emb, groups, dims=None):
    from qwen3_rag.server.workers import EmbedJob

    return [EmbedJob(rows=emb.encode_documents(texts).ids, dimensions=dims) for texts in groups]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("max_batch_requests", [64, 1])
@pytest.mark.slow
def test_queued_requests_share_forwards_unless_batching_is_off(emb, max_batch_requests):
    from qwen3_rag.server.workers import EmbedWorker

    forwards: list[int] = []
    worker = EmbedWorker(
        emb,
        max_queue=8,
        max_batch_requests=max_batch_requests,
        on_batch=lambda kind, rows, tokens: forwards.append(rows),
    )
    groups = [CORPUS[:2], CORPUS[2:5], CORPUS[5:6]]
    first, *rest = _jobs(emb, groups)
    try:
        with emb._lock:  # the worker blocks in the first forward while the others queue up
            futures = [worker.submit(first)]
            time.sleep(0.3)
            futures += [worker.submit(job) for job in rest]
        results = [f.result(timeout=30) for f in futures]
    finally:
        assert worker.close(timeout=30)
    # A lone request runs exactly the in-process batches.
    np.testing.assert_array_equal(results[0], emb.embed_documents(groups[0]))
    for got, texts in zip(results[1:], groups[1:], strict=True):
        np.testing.assert_allclose(got, emb.embed_documents(texts), atol=2e-5, rtol=0)
    if max_batch_requests == 1:
        assert forwards == [2, 3, 1]
        for got, texts in zip(results, groups, strict=True):
            np.testing.assert_array_equal(got, emb.embed_documents(texts))
    else:
        assert forwards == [2, 4]  # the two queued requests shared one forward


@pytest.mark.timeout(60)
def test_per_request_dimensions_equal_a_smaller_embedder(emb, embed_eos_path):
    from qwen3_rag.core import Qwen3Embedder
    from qwen3_rag.server.workers import EmbedWorker

    worker = EmbedWorker(emb, max_queue=4, max_batch_requests=4)
    try:
        (job,) = _jobs(emb, [CORPUS], dims=32)
        got = worker.submit(job).result(timeout=30)
    finally:
        worker.close(timeout=30)
    small = Qwen3Embedder(embed_eos_path, max_length=64, dimensions=32, show_progress=False)
    np.testing.assert_array_equal(got, small.embed_documents(CORPUS))


@pytest.mark.timeout(60)
def test_full_queue_cancelled_jobs_and_shutdown(emb):
    from qwen3_rag.server.workers import (
        EmbedWorker,
        JobCancelledError,
        QueueFullError,
        ShuttingDownError,
    )

    worker = EmbedWorker(emb, max_queue=2, max_batch_requests=4)
    a, b, c = _jobs(emb, [CORPUS[:3], CORPUS[3:6], CORPUS[6:9]])
    with emb._lock:
        fa = worker.submit(a)
        time.sleep(0.3)
        fb = worker.submit(b)
        with pytest.raises(QueueFullError):
            worker.submit(c)
        b.cancel()
    np.testing.assert_array_equal(fa.result(timeout=30), emb.embed_documents(CORPUS[:3]))
    with pytest.raises(JobCancelledError):
        fb.result(timeout=30)
    assert worker.close(timeout=30) and worker.depth == 0
    with pytest.raises(ShuttingDownError):
        worker.submit(c)
