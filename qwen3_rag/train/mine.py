"""Hard-negative mining with the current embedding model, as the paper's data recipe needs.

For each training query the corpus is ranked by the model; the best-scoring passages that are
not positives become its hard negatives, except those scoring above the (lowest) positive's
score plus the margin: such a "negative" is probably an unlabelled positive, the same rule the
loss's mask applies (:func:`~qwen3_rag.train.contrastive_loss`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from qwen3_rag.datafiles import json_lines
from qwen3_rag.indexing.options import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE

from .data import TrainExample, TrainingDataError, read_beir_corpus
from .loss import DEFAULT_MARGIN

if TYPE_CHECKING:
    from qwen3_rag.core import Qwen3Embedder

logger = logging.getLogger(__name__)

#: Hard negatives kept per query by default (FlagEmbedding's miner keeps 15; 8 fits a CPU).
DEFAULT_NEGATIVES = 8
# Queries scored against the corpus per matrix product: bounds memory at 256 x corpus floats.
_QUERY_BLOCK = 256


def load_corpus(
    path: str | os.PathLike[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> list[str]:
    """Passages to mine from: a JSONL file, a BEIR folder, or a folder of documents.

    * A ``.jsonl`` file: one passage per line, a JSON string or an object with ``"text"`` (and
      an optional ``"title"``, joined with a space as in BEIR).
    * A folder holding ``corpus.jsonl``: a BEIR corpus.
    * Any other folder: its ``.txt``/``.md``/``.pdf`` files, chunked as ``qwen3-rag index``
      chunks them (``chunk_size``/``chunk_overlap`` characters).

    Identical passages are kept once.

    Raises:
        TrainingDataError: For a missing, malformed or empty corpus (file and line named).
    """
    source = Path(path)
    if source.is_dir() and (source / "corpus.jsonl").is_file():
        texts = list(read_beir_corpus(source).values())
    elif source.is_dir():
        from qwen3_rag.indexing.documents import DocumentError, chunk_file, find_files

        try:
            files = find_files([str(source)])
            texts = [c.text for f in files for c in chunk_file(f, chunk_size, chunk_overlap)[0]]
        except DocumentError as e:
            raise TrainingDataError(str(e)) from e
    elif source.is_file():
        texts = [text for _, text in _lines(source)]
    else:
        raise TrainingDataError(f"{source}: no such corpus file or folder")
    unique = list(dict.fromkeys(t for t in texts if t.strip()))
    if not unique:
        raise TrainingDataError(f"{source}: the corpus holds no passages")
    return unique


def _lines(path: Path) -> list[tuple[int, str]]:
    """Passages of a JSONL corpus: strings, or objects with ``text`` (and ``title``)."""
    rows: list[tuple[int, str]] = []
    for number, value in json_lines(path, TrainingDataError):
        if isinstance(value, str):
            rows.append((number, value))
            continue
        if not isinstance(value, dict):
            raise TrainingDataError(
                f"{path}:{number}: expected a string or an object with 'text', got "
                f"{type(value).__name__}"
            )
        text, title = value.get("text"), value.get("title") or ""
        if not isinstance(text, str) or not isinstance(title, str):
            raise TrainingDataError(f"{path}:{number}: field 'text' must be a string")
        rows.append((number, f"{title} {text}".strip() if title else text))
    return rows


def mine_hard_negatives(
    examples: Sequence[TrainExample],
    corpus: Sequence[str],
    embedder: Qwen3Embedder,
    *,
    negatives: int = DEFAULT_NEGATIVES,
    margin: float = DEFAULT_MARGIN,
    instruction: str | None = None,
    show_progress: bool | None = None,
) -> list[TrainExample]:
    """Each example with its ``neg`` replaced by the model's hardest safe negatives.

    Candidates are ranked by cosine similarity to the query (formatted with the example's
    instruction, else ``instruction``, else the embedder's, exactly as at inference). A
    candidate is skipped if it is one of the example's positives (same text) or scores above
    ``min(positive scores) + margin`` (a likely false negative); the first ``negatives`` left
    are kept, best first.

    Args:
        examples: The training examples (not changed; new ones are returned).
        corpus: Candidate passages (see :func:`load_corpus`).
        embedder: The current model.
        negatives: Hard negatives per query, >= 1.
        margin: Cosine margin of the false-negative filter, >= 0.
        instruction: Task for examples without their own; None uses the embedder's.
        show_progress: Progress bars for embedding and scoring; None: automatic.

    Returns:
        One example per input, in order, with the mined ``neg`` (fewer than ``negatives`` when
        the corpus runs out of safe candidates; a warning says how many).
    """
    if isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 1:
        raise ValueError(f"negatives must be a positive int, got {negatives!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise ValueError(f"margin must be a number >= 0, got {margin!r}")
    passages = list(corpus)
    if not examples or not passages:
        raise ValueError("mining needs at least one example and one corpus passage")
    default_task = embedder.instruction if instruction is None else instruction
    docs = np.asarray(embedder.embed_documents(passages), dtype=np.float32)
    positives = sorted({p for e in examples for p in e.pos})
    pos_vectors = dict(
        zip(
            positives,
            np.asarray(embedder.embed_documents(positives), dtype=np.float32),
            strict=True,
        )
    )
    by_task: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        task = default_task if example.instruction is None else example.instruction
        by_task.setdefault(task, []).append(i)
    queries = np.zeros((len(examples), docs.shape[1]), dtype=np.float32)
    for task, rows in by_task.items():
        texts = [examples[i].query for i in rows]
        queries[rows] = np.asarray(embedder.embed_queries(texts, instruction=task))
    mined: list[TrainExample] = []
    short = 0
    # Enough candidates for the positives and a few false negatives; a full sort when not.
    depth = min(len(passages), 4 * negatives + 32)
    with tqdm(
        total=len(examples), desc="mine", unit="query", disable=_disable(show_progress)
    ) as bar:
        for start in range(0, len(examples), _QUERY_BLOCK):
            block = queries[start : start + _QUERY_BLOCK]
            scores = block @ docs.T
            for offset, row in enumerate(scores):
                example = examples[start + offset]
                q = block[offset]
                limit = min(float(q @ pos_vectors[p]) for p in example.pos) + margin
                chosen = _pick(row, depth, set(example.pos), passages, limit, negatives)
                if len(chosen) < negatives:
                    chosen = _pick(row, len(passages), set(example.pos), passages, limit, negatives)
                    short += len(chosen) < negatives
                mined.append(replace(example, neg=chosen))
                bar.update(1)
    if short:
        logger.warning(
            "%d of %d queries got fewer than %d hard negatives: the corpus has too few passages "
            "that are neither positives nor above the positive's score + %g",
            short,
            len(examples),
            negatives,
            margin,
        )
    return mined


def _pick(
    row: np.ndarray, depth: int, pos: set[str], passages: list[str], limit: float, n: int
) -> list[str]:
    """The first ``n`` passages of the ``depth`` best that are not positives or above ``limit``."""
    top = np.argpartition(-row, depth - 1)[:depth] if depth < len(row) else np.arange(len(row))
    order = top[np.argsort(-row[top], kind="stable")]
    chosen: list[str] = []
    for index in order:
        text = passages[int(index)]
        if text in pos or float(row[index]) > limit:
            continue
        chosen.append(text)
        if len(chosen) == n:
            break
    return chosen


def _disable(show_progress: bool | None) -> bool | None:
    return None if show_progress is None else not show_progress
