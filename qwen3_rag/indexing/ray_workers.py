"""What runs on the Ray workers: reading files into chunk rows, and the embed-and-write actor.

Rows travel as flat string columns (Arrow-friendly): ``kind`` is ``"file"`` for one row per
file (its :class:`~qwen3_rag.indexing.plan.FilePlan` minus the chunks, as JSON in ``info``) or
``"chunk"`` for each chunk to embed (``id``, ``text``, ``metadata`` as JSON, ``source``).
The actor embeds and upserts the chunk rows and passes every row on without its text, so the
driver learns which chunks are stored and can remove a file's stale chunks only after all of
its new ones are. A GPU worker takes two batches at a time (:data:`CALLS_PER_GPU_WORKER`): one
batch's upsert runs while the next one is embedded, and the forwards themselves take turns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ("kind", "id", "text", "metadata", "source", "info")
#: Batches a GPU worker works on at once: one batch's upsert (CPU and network) runs while the
#: next one is embedded.
CALLS_PER_GPU_WORKER = 2
#: A CPU worker takes one at a time: its forward already uses every core it has, so an
#: overlapping upsert only competes with it (measured: no gain on 2 cores).
CALLS_PER_CPU_WORKER = 1
#: Calls of one batch before it fails the run: a batch whose every call kills its worker (an
#: input that crashes the model's process) is retried by Ray without limit otherwise.
MAX_BATCH_ATTEMPTS = 3


class PoisonBatchError(RuntimeError):
    """A batch killed its worker :data:`MAX_BATCH_ATTEMPTS` times; names its files."""


def quiet_worker(verbose: bool) -> None:
    """Hide transformers' bars and info logs and pypdf's warnings in a worker unless verbose."""
    if verbose:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger("pypdf").setLevel(logging.ERROR)


class Counter:
    """Chunks read and embedded so far, reported by the workers for the driver's progress.

    Counts are kept per file read and per batch embedded, so a read task or a batch that Ray
    retries after a killed worker is counted once. It also counts each batch's calls, so that
    one that keeps killing its worker fails the run instead of looping.
    """

    def __init__(self) -> None:
        self.files: dict[str, tuple[int, int]] = {}
        self.batches: dict[str, int] = {}
        self.attempts: dict[str, int] = {}

    def read(self, path: str, chunks: int, fresh: int) -> None:
        """A file was read: its chunks, and how many of them are new."""
        self.files[path] = (chunks, fresh)

    def embedded(self, batch: str, chunks: int) -> None:
        """A batch was embedded."""
        self.batches[batch] = chunks

    def attempt(self, batch: str) -> int:
        """A call of ``batch`` starts; returns how many calls it has had, this one included."""
        self.attempts[batch] = self.attempts.get(batch, 0) + 1
        return self.attempts[batch]

    def get(self) -> dict[str, int]:
        """The counts so far: files and chunks read, new chunks, chunks embedded."""
        return {
            "files": len(self.files),
            "read": sum(c for c, _ in self.files.values()),
            "fresh": sum(f for _, f in self.files.values()),
            "embedded": sum(self.batches.values()),
        }


def read_files(
    batch: dict[str, np.ndarray],
    *,
    chunk_size: int,
    chunk_overlap: int,
    counter: Any,
    verbose: bool,
) -> dict[str, np.ndarray]:
    """Plan each file of the batch (``path``, ``stored`` ids as JSON) into file and chunk rows."""
    from .plan import plan_file

    quiet_worker(verbose)
    rows: dict[str, list[str]] = {name: [] for name in COLUMNS}

    def add(**row: str) -> None:
        for name in COLUMNS:
            rows[name].append(row.get(name, ""))

    for path, stored in zip(batch["path"], batch["stored"], strict=True):
        plan = plan_file(Path(str(path)), set(json.loads(str(stored))), chunk_size, chunk_overlap)
        info = {
            "chunks": plan.chunks,
            "fresh": len(plan.fresh),
            "unchanged": plan.unchanged,
            "stale": sorted(plan.stale),
            "skipped": plan.skipped,
            "replaced": plan.replaced,
        }
        add(kind="file", source=plan.source, info=json.dumps(info))
        for chunk in plan.fresh:
            add(
                kind="chunk",
                id=chunk.id,
                text=chunk.text,
                metadata=json.dumps(chunk.metadata, ensure_ascii=False),
                source=plan.source,
            )
        counter.read.remote(plan.source, plan.chunks, len(plan.fresh))
    return {name: np.array(values, dtype=object) for name, values in rows.items()}


def open_for_writing(chroma_url: str, name: str, embedder: Any) -> tuple[Any, Any]:
    """The Chroma client and the collection for ``embedder``, created if new.

    The same check as the single-process indexer (:meth:`~qwen3_rag.indexing.store.Store.
    open_for`): a collection built with other settings is refused.
    """
    from .options import StoreOptions
    from .store import open_store

    store = open_store(StoreOptions(chroma_url=chroma_url, collection=name), write=True)
    try:
        return store.client, store.open_for(embedder)
    except Exception:
        # Workers start together: another one may have created it between this one's look
        # and its create. Open what it made (checked the same way); anything else is raised.
        if store.stored_config() is None:
            raise
        return store.client, store.open_for(embedder)


class EmbedWriter:
    """A Ray Data actor: one :class:`~qwen3_rag.Qwen3Embedder`, loaded once, embeds and upserts.

    Args:
        model: Hub id or folder (as the collection records it).
        options: :class:`~qwen3_rag.core.EmbedderConfig` options.
        chroma_url: The Chroma server.
        collection: The collection name.
        threads: Torch threads (CPU workers), or None to keep torch's choice.
        counter: The :class:`Counter` actor.
        verbose: Keep the libraries' logs and bars.
    """

    def __init__(
        self,
        model: str,
        options: dict[str, Any],
        chroma_url: str,
        collection: str,
        threads: int | None,
        counter: Any,
        verbose: bool,
    ) -> None:
        import torch

        from qwen3_rag.core import Qwen3Embedder

        quiet_worker(verbose)
        if threads:
            torch.set_num_threads(threads)
        self.embedder = Qwen3Embedder(model, show_progress=False, **options)
        self.client, self.collection = open_for_writing(chroma_url, collection, self.embedder)
        self.max_rows = int(self.client.get_max_batch_size())
        self.counter = counter
        # Calls may run in several threads. One forward at a time: each takes all of the
        # worker's cores (or its GPU).
        self.forward = threading.Lock()
        # One upsert at a time on the shared client.
        self.write = threading.Lock()

    def _check_attempts(self, key: str, batch: dict[str, np.ndarray], is_chunk: np.ndarray) -> None:
        """Fail a batch whose earlier calls all killed their worker (see the Counter)."""
        import ray

        attempt = int(ray.get(self.counter.attempt.remote(key)))
        sources = sorted({str(s) for s in batch["source"][is_chunk]})
        error = _attempts_exceeded(attempt, sources)
        if error is not None:
            raise error

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed and upsert the batch's chunk rows; return every row without its text."""
        is_chunk = np.asarray(batch["kind"]) == "chunk"
        ids = [str(i) for i in batch["id"][is_chunk]]
        counts = np.zeros((len(is_chunk), 2), dtype=np.int64)
        if ids:
            key = hashlib.sha256("\0".join(ids).encode()).hexdigest()
            self._check_attempts(key, batch, is_chunk)
            texts = [str(t) for t in batch["text"][is_chunk]]
            metadatas = [json.loads(str(m)) for m in batch["metadata"][is_chunk]]
            with self.forward:
                # Truncation is counted here and totalled by the driver, once per run.
                encoded = self.embedder.encode_documents(texts)
                vectors = self.embedder.embed_encoded(encoded)
                counts[0] = (encoded.truncated, len(ids))
            self.counter.embedded.remote(key, len(ids))
            # Upsert, not add: a batch retried after a killed worker may be stored already.
            # The rows go back only once stored: the driver removes stale chunks on them.
            with self.write:
                for start in range(0, len(ids), self.max_rows):
                    end = start + self.max_rows
                    self.collection.upsert(
                        ids=ids[start:end],
                        embeddings=vectors[start:end],
                        documents=texts[start:end],
                        metadatas=metadatas[start:end],
                    )
        return {
            "kind": batch["kind"],
            "id": batch["id"],
            "source": batch["source"],
            "info": batch["info"],
            "truncated": counts[:, 0],
            "embedded": counts[:, 1],
        }


def _attempts_exceeded(attempt: int, sources: list[str]) -> PoisonBatchError | None:
    if attempt <= MAX_BATCH_ATTEMPTS:
        return None
    return PoisonBatchError(
        f"a batch of {len(sources)} file(s) killed its Ray worker {attempt - 1} times and was "
        f"given up: {', '.join(sources)}; index them alone (or leave them out) to find the one "
        "that crashes the model's process"
    )


def create_collection(chroma_url: str, name: str, model: str, options: dict[str, Any]) -> None:
    """Create the (empty) collection, as a worker would: used when no chunk was written."""
    from qwen3_rag.core import Qwen3Embedder

    quiet_worker(False)
    open_for_writing(chroma_url, name, Qwen3Embedder(model, show_progress=False, **options))
