"""What runs on the Ray workers: reading files into chunk rows, and the embed-and-write actor.

Rows travel as flat string columns (Arrow-friendly): ``kind`` is ``"file"`` for one row per
file (its :class:`~qwen3_rag.cli.index.FilePlan` minus the chunks, as JSON in ``info``) or
``"chunk"`` for each chunk to embed (``id``, ``text``, ``metadata`` as JSON, ``source``).
The actor embeds and upserts the chunk rows and passes every row on without its text, so the
driver learns which chunks are stored and can remove a file's stale chunks only after all of
its new ones are. A GPU worker takes two batches at a time (:data:`CALLS_PER_GPU_WORKER`): one
batch's upsert runs while the next one is embedded, and the forwards themselves take turns.
"""

from __future__ import annotations

import argparse
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


def quiet_worker(verbose: bool) -> None:
    """Hide transformers' bars and info logs and pypdf's warnings in a worker unless verbose."""
    if verbose:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    logging.getLogger("pypdf").setLevel(logging.ERROR)


class Counter:
    """Chunks read and embedded so far, reported by the workers for the driver's progress."""

    def __init__(self) -> None:
        self.counts = {"files": 0, "read": 0, "fresh": 0, "embedded": 0}

    def add(self, **counts: int) -> None:
        """Add to the named counts."""
        for key, value in counts.items():
            self.counts[key] += value

    def get(self) -> dict[str, int]:
        """The counts so far."""
        return dict(self.counts)


def read_files(
    batch: dict[str, np.ndarray],
    *,
    chunk_size: int,
    chunk_overlap: int,
    counter: Any,
    verbose: bool,
) -> dict[str, np.ndarray]:
    """Plan each file of the batch (``path``, ``stored`` ids as JSON) into file and chunk rows."""
    from qwen3_rag.cli.index import plan_file

    quiet_worker(verbose)
    rows: dict[str, list[str]] = {name: [] for name in COLUMNS}

    def add(**row: str) -> None:
        for name in COLUMNS:
            rows[name].append(row.get(name, ""))

    read = fresh = 0
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
        read += plan.chunks
        fresh += len(plan.fresh)
    counter.add.remote(files=len(batch["path"]), read=read, fresh=fresh)
    return {name: np.array(values, dtype=object) for name, values in rows.items()}


def open_for_writing(chroma_url: str, name: str, embedder: Any) -> tuple[Any, Any]:
    """The Chroma client and the collection for ``embedder``, created if new.

    The same check as the single-process indexer (:func:`~qwen3_rag.cli.store.
    open_collection_with`): a collection built with another model or dimension is refused.
    """
    from qwen3_rag.cli.store import open_client, open_collection_with, stored_config

    client = open_client(
        argparse.Namespace(chroma_url=chroma_url, db=None), write=True, rebuild_hint=""
    )
    try:
        return client, open_collection_with(client, name, embedder)
    except Exception:
        # Workers start together: another one may have created it between this one's look
        # and its create. Open what it made (checked the same way); anything else is raised.
        if stored_config(client, name) is None:
            raise
        return client, open_collection_with(client, name, embedder)


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

        from qwen3_rag.cli.index import TruncationCount
        from qwen3_rag.core import Qwen3Embedder

        quiet_worker(verbose)
        if threads:
            torch.set_num_threads(threads)
        self.embedder = Qwen3Embedder(model, show_progress=False, **options)
        self.client, self.collection = open_for_writing(chroma_url, collection, self.embedder)
        self.max_rows = int(self.client.get_max_batch_size())
        self.counter = counter
        # Truncation warnings are counted here and totalled by the driver, once per run.
        self.truncation = TruncationCount()
        logging.getLogger("qwen3_rag.core.runtime").addFilter(self.truncation)
        # Calls may run in several threads. One forward at a time: each takes all of the
        # worker's cores (or its GPU), and the truncation count around it is then its own.
        self.forward = threading.Lock()
        # One upsert at a time on the shared client.
        self.write = threading.Lock()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embed and upsert the batch's chunk rows; return every row without its text."""
        is_chunk = np.asarray(batch["kind"]) == "chunk"
        ids = [str(i) for i in batch["id"][is_chunk]]
        counts = np.zeros((len(is_chunk), 2), dtype=np.int64)
        if ids:
            texts = [str(t) for t in batch["text"][is_chunk]]
            metadatas = [json.loads(str(m)) for m in batch["metadata"][is_chunk]]
            with self.forward:
                truncated = self.truncation.truncated
                vectors = self.embedder.embed_documents(texts)
                counts[0] = (self.truncation.truncated - truncated, len(ids))
            self.counter.add.remote(embedded=len(ids))
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


def create_collection(chroma_url: str, name: str, model: str, options: dict[str, Any]) -> None:
    """Create the (empty) collection, as a worker would: used when no chunk was written."""
    from qwen3_rag.core import Qwen3Embedder

    quiet_worker(False)
    open_for_writing(chroma_url, name, Qwen3Embedder(model, show_progress=False, **options))
