"""Ranked lists ("runs") for a dataset, the corpus-vector cache and TREC run files.

Exact dense search, BM25, sentence-transformers baselines, reciprocal rank fusion, reranking.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qwen3_rag.datafiles import open_atomic, write_atomic

from .data import DataError, Dataset
from .metrics import Run, trec_order

logger = logging.getLogger("qwen3_rag.eval")

#: Documents kept per query in every run (and in TREC run files).
RUN_DEPTH = 100
#: The k of reciprocal rank fusion (Cormack et al. 2009).
RRF_K = 60
_CACHE_FORMAT = 1


# -- cache ---------------------------------------------------------------------------------
def corpus_hash(corpus: Mapping[str, str]) -> str:
    """SHA-256 of the corpus ids and texts, in order."""
    digest = hashlib.sha256()
    for doc_id, text in corpus.items():
        for part in (doc_id, text):
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def model_fingerprint(model: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a model's weights: a folder's files (name, size, mtime), or a hub id.

    A hub model resolves to a snapshot folder named by its commit, so the same function covers
    both; a folder whose weights are rewritten in place (a new fine-tune) gets a new mtime.
    """
    path = Path(model)
    if not path.is_dir():
        return {"model": os.fspath(model)}
    files = []
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix in (".json", ".safetensors", ".txt", ".model"):
            stat = file.stat()
            files.append([str(file.relative_to(path)), stat.st_size, stat.st_mtime_ns])
    return {"model": str(path.resolve()), "files": files}


class VectorCache:
    """Corpus vectors on disk, one ``.npz`` file per key; written atomically (temp + rename)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder).expanduser()

    def _path(self, key: Mapping[str, Any]) -> tuple[Path, str]:
        text = json.dumps({"format": _CACHE_FORMAT, **key}, sort_keys=True, default=str)
        return self.folder / (hashlib.sha256(text.encode()).hexdigest()[:32] + ".npz"), text

    def get(self, key: Mapping[str, Any], ids: Sequence[str]) -> np.ndarray | None:
        """The vectors stored under ``key`` for ``ids`` (in that order), or None."""
        path, text = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != text or list(data["ids"]) != list(ids):
                    return None
                vectors: np.ndarray = data["vectors"]
                return vectors
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            # A damaged or truncated file: recompute it (and overwrite it).
            logger.warning("ignoring unreadable cache file %s: %s", path, e)
            return None

    def put(self, key: Mapping[str, Any], ids: Sequence[str], vectors: np.ndarray) -> Path:
        """Store ``vectors`` (rows in ``ids`` order) under ``key``."""
        path, text = self._path(key)
        with open_atomic(path) as handle:
            np.savez(handle, key=np.array(text), ids=np.array(list(ids)), vectors=vectors)
        return path


def cached_vectors(
    cache: VectorCache | None,
    key: Mapping[str, Any],
    corpus: Mapping[str, str],
    embed: Callable[[list[str]], np.ndarray],
) -> np.ndarray:
    """The corpus vectors under ``key``: from ``cache`` when there, else embedded (and stored)."""
    ids = list(corpus)
    full_key = {**key, "corpus": corpus_hash(corpus)}
    if cache is not None:
        hit = cache.get(full_key, ids)
        if hit is not None:
            logger.info("corpus vectors from the cache (%d documents)", len(ids))
            return hit
    logger.info("embedding %d documents", len(ids))
    vectors = np.asarray(embed([corpus[i] for i in ids]), dtype=np.float32)
    if cache is not None:
        cache.put(full_key, ids, vectors)
    return vectors


def qwen3_cache_key(embedder: Any) -> dict[str, Any]:
    """Every property of a Qwen3Embedder that changes its document vectors."""
    options = dict(embedder.config.persisted())
    options.pop("instruction", None)  # documents are embedded without it
    return {
        "backend": "qwen3",
        **model_fingerprint(embedder.model_dir),
        "revision": embedder.revision,
        "options": options,
        "dtype": str(embedder.dtype),
        "device": embedder.device.type,
        "max_chars": embedder.max_chars,
    }


# -- search --------------------------------------------------------------------------------
def truncate(vectors: np.ndarray, dimensions: int | None) -> np.ndarray:
    """The first ``dimensions`` values of each vector, L2-normalised again (MRL, as the core)."""
    import torch

    from qwen3_rag.core.pooling import truncate_and_normalize

    if dimensions is None or dimensions >= vectors.shape[1]:
        return vectors
    return truncate_and_normalize(torch.from_numpy(vectors), dimensions).numpy()


def exact_search(
    query_vectors: np.ndarray,
    doc_vectors: np.ndarray,
    query_ids: Sequence[str],
    doc_ids: Sequence[str],
    depth: int = RUN_DEPTH,
) -> Run:
    """Top ``depth`` documents per query by exact inner product (torch, in query blocks)."""
    import torch

    k = min(depth, len(doc_ids))
    docs = torch.from_numpy(np.ascontiguousarray(doc_vectors, dtype=np.float32))
    run: Run = {}
    for start in range(0, len(query_ids), 256):
        block = torch.from_numpy(
            np.ascontiguousarray(query_vectors[start : start + 256], dtype=np.float32)
        )
        scores, index = torch.topk(block @ docs.T, k, dim=1)
        for row, qid in enumerate(query_ids[start : start + 256]):
            run[qid] = {
                doc_ids[int(i)]: float(s)
                for s, i in zip(scores[row].tolist(), index[row].tolist(), strict=True)
            }
    return run


def bm25_run(dataset: Dataset, depth: int = RUN_DEPTH) -> Run:
    """BM25 (bm25s, Lucene's variant, English stopwords, no stemming) over the corpus.

    No model runs, so it is quick and shows no progress bar.
    """
    import bm25s

    doc_ids = list(dataset.corpus)
    query_ids = list(dataset.queries)
    retriever = bm25s.BM25()
    retriever.index(
        bm25s.tokenize(list(dataset.corpus.values()), stopwords="en", show_progress=False),
        show_progress=False,
    )
    tokens = bm25s.tokenize(
        [dataset.queries[q] for q in query_ids], stopwords="en", show_progress=False
    )
    k = min(depth, len(doc_ids))
    results, scores = retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
    return {
        qid: {doc_ids[int(d)]: float(s) for d, s in zip(results[row], scores[row], strict=True)}
        for row, qid in enumerate(query_ids)
    }


def load_sentence_transformer(model: str, device: str | None = None) -> Any:
    """A sentence-transformers model, loaded (a hub id offline needs it in the cache).

    Raises:
        ValueError: If the model cannot be loaded (the message names it).
    """
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(model, device=device)
    except Exception as e:  # ST raises OSError, ValueError, HF errors...
        raise ValueError(f"cannot load sentence-transformers model {model!r}: {e}") from e


def st_run(
    model: str,
    dataset: Dataset,
    *,
    loaded: Any | None = None,
    cache: VectorCache | None = None,
    depth: int = RUN_DEPTH,
    progress: bool = False,
    device: str | None = None,
) -> Run:
    """Exact search with a sentence-transformers model (its own query/document prompts, if any).

    Args:
        model: Its hub id or folder (the cache key names it).
        dataset: The data.
        loaded: ``model`` already loaded by :func:`load_sentence_transformer`; None loads it.
        cache: Corpus-vector cache, or None.
        depth: Documents kept per query.
        progress: Show progress bars.
        device: Device to load it on (when not ``loaded``).

    Raises:
        ValueError: If the model cannot be loaded (the message names it).
    """
    st = loaded if loaded is not None else load_sentence_transformer(model, device)
    prompts = getattr(st, "prompts", {}) or {}
    doc_prompt = (
        "document" if "document" in prompts else ("passage" if "passage" in prompts else None)
    )
    query_prompt = "query" if "query" in prompts else None

    def encode(texts: list[str], prompt: str | None) -> np.ndarray:
        return np.asarray(
            st.encode(
                texts,
                prompt_name=prompt,
                normalize_embeddings=True,
                show_progress_bar=progress,
                convert_to_numpy=True,
            ),
            dtype=np.float32,
        )

    key = {
        "backend": "sentence-transformers",
        **model_fingerprint(model),
        "max_seq_length": st.max_seq_length,
        "prompt": prompts.get(doc_prompt, "") if doc_prompt else "",
        "device": str(st.device.type),
    }
    docs = cached_vectors(cache, key, dataset.corpus, lambda t: encode(t, doc_prompt))
    query_ids = list(dataset.queries)
    queries = encode([dataset.queries[q] for q in query_ids], query_prompt)
    return exact_search(queries, docs, query_ids, list(dataset.corpus), depth)


def rrf(runs: Sequence[Run], k: int = RRF_K, depth: int = RUN_DEPTH) -> Run:
    """Reciprocal rank fusion: each document scores ``sum(1 / (k + rank))`` over the runs."""
    fused: Run = {}
    for qid in dict.fromkeys(q for run in runs for q in run):
        scores: dict[str, float] = {}
        for run in runs:
            for rank, doc in enumerate(ranked(run.get(qid, {})), 1):
                scores[doc] = scores.get(doc, 0.0) + 1.0 / (k + rank)
        fused[qid] = {d: scores[d] for d in trec_order(scores)[:depth]}
    return fused


def ranked(docs: Mapping[str, float]) -> list[str]:
    """Document ids best first, ties in trec_eval's order (see :func:`~.metrics.trec_order`).

    The metrics read a run in this order, so reranking, fusion and the rank column of a TREC
    run file use it too.
    """
    return trec_order(docs)


def rerank_run(
    reranker: Any,
    dataset: Dataset,
    run: Run,
    top_k: int,
    *,
    texts: Mapping[str, str] | None = None,
    progress: bool = False,
) -> Run:
    """Rerank the first ``top_k`` documents of each query of ``run`` with ``reranker.score``.

    The reranked documents keep their reranker score (P("yes"), in [0, 1]); the rest of the
    list follows in its first order, its scores moved below 0 (``score - 3``, for cosine
    scores in [-1, 1], or ``-1 - rank / depth`` for others) so every file states the order.
    """
    from tqdm.auto import tqdm

    source = dataset.corpus if texts is None else texts
    out: Run = {}
    bar = tqdm(list(run), desc="rerank", unit="query", disable=not progress, dynamic_ncols=True)
    for qid in bar:
        order = ranked(run[qid])
        head, tail = order[:top_k], order[top_k:]
        scores = reranker.score(dataset.queries[qid], [source[d] for d in head]) if head else []
        result = {d: float(s) for d, s in zip(head, scores, strict=True)}
        cosine = all(-1.0001 <= run[qid][d] <= 1.0001 for d in tail)
        for rank, d in enumerate(tail):
            result[d] = run[qid][d] - 3.0 if cosine else -1.0 - rank / max(len(tail), 1)
        out[qid] = result
    return out


# -- TREC run files ------------------------------------------------------------------------
def write_trec_run(
    run: Run, path: str | os.PathLike[str], name: str, depth: int = RUN_DEPTH
) -> Path:
    """Write ``run`` as a TREC run file (``qid Q0 docid rank score tag``), top ``depth``.

    Scores are written with ``repr`` so reading the file back gives the same floats. Ids with
    whitespace cannot be written in this format and raise ``DataError``.
    """
    tag = "".join(c if not c.isspace() else "_" for c in name) or "run"
    lines = []
    for qid, docs in run.items():
        for rank, doc in enumerate(ranked(docs)[:depth], 1):
            if any(c.isspace() for c in qid + doc):
                raise DataError(
                    f"id {qid if any(c.isspace() for c in qid) else doc!r} contains whitespace; "
                    "a TREC run file cannot hold it"
                )
            lines.append(f"{qid} Q0 {doc} {rank} {docs[doc]!r} {tag}\n")
    target = Path(path)
    write_atomic(target, lines)
    return target
