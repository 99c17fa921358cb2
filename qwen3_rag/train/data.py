"""Training data: FlagEmbedding-style JSONL or a BEIR folder's train split, read strictly.

One :class:`TrainExample` per query: its positives, its hard negatives and, optionally, its own
instruction. Every reader error is a :class:`TrainingDataError` naming the file, line and field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwen3_rag.datafiles import DataError, json_objects, qrels_rows, write_atomic

#: The file of a BEIR folder that holds the training judgements.
BEIR_TRAIN_QRELS = Path("qrels") / "train.tsv"


class TrainingDataError(DataError):
    """Malformed training data; the message names the file, line and field."""


@dataclass(frozen=True)
class TrainExample:
    """One query with its relevant and irrelevant documents.

    Attributes:
        query: The query text, without instruction (the trainer formats it as at inference).
        pos: Relevant documents, at least one.
        neg: Hard negatives (may be empty: in-batch negatives still apply).
        instruction: The task for this query; None uses the trainer's default instruction,
            ``""`` means none.
    """

    query: str
    pos: list[str]
    neg: list[str] = field(default_factory=list)
    instruction: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSONL row (``instruction`` only when set)."""
        row: dict[str, Any] = {"query": self.query, "pos": list(self.pos), "neg": list(self.neg)}
        if self.instruction is not None:
            row["instruction"] = self.instruction
        return row


def load_training_data(path: str | os.PathLike[str]) -> list[TrainExample]:
    """Read training examples from a JSONL file or a BEIR folder.

    JSONL: one object per line, ``{"query": str, "pos": [str, ...], "neg": [str, ...],
    "instruction": str}``; ``neg`` and ``instruction`` are optional, other keys (scores,
    persona, type, difficulty, language, ...) are ignored. Blank lines are skipped.

    BEIR folder: ``corpus.jsonl`` (``{"_id", "title"?, "text"}``; the title is joined to the
    text with a space), ``queries.jsonl`` (``{"_id", "text"}``) and ``qrels/train.tsv``
    (``query-id, corpus-id, score``). A judgement with score > 0 is a positive; one with score
    <= 0 (judged not relevant) is a hard negative. Queries without a positive are left out.

    Args:
        path: The JSONL file or the BEIR folder.

    Returns:
        The examples, in file order (BEIR: in ``queries.jsonl`` order).

    Raises:
        TrainingDataError: If the file or folder is missing, malformed, or holds no example;
            the message names the file, line and field.
    """
    source = Path(path)
    if source.is_dir():
        return _load_beir(source)
    if not source.exists():
        raise TrainingDataError(f"{source}: no such file or folder")
    examples = [
        _example(row, f"{source}:{number}")
        for number, row in json_objects(source, TrainingDataError)
    ]
    if not examples:
        raise TrainingDataError(f"{source}: holds no training examples")
    return examples


def write_training_data(path: str | os.PathLike[str], examples: Iterable[TrainExample]) -> int:
    """Write ``examples`` as JSONL, atomically (a temporary file renamed into place).

    Returns:
        The number of examples written.
    """
    return write_atomic(
        path, (json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in examples)
    )


def read_beir_corpus(path: str | os.PathLike[str]) -> dict[str, str]:
    """A BEIR ``corpus.jsonl`` (or the folder holding it) as document id -> text.

    Raises:
        TrainingDataError: For a missing file, a malformed row or a duplicate id.
    """
    source = Path(path)
    file = source / "corpus.jsonl" if source.is_dir() else source
    corpus: dict[str, str] = {}
    for number, row in json_objects(file, TrainingDataError):
        where = f"{file}:{number}"
        doc_id = _string(row, "_id", where, allow_number=True)
        assert doc_id is not None  # required
        title = _string(row, "title", where, required=False) or ""
        text = _string(row, "text", where, required=False)
        if text is None:
            raise TrainingDataError(f"{where}: missing field 'text'")
        if doc_id in corpus:
            raise TrainingDataError(f"{where}: duplicate document id {doc_id!r}")
        # BEIR's convention (and qwen3_rag.eval's): title, one space, text. Some BEIR corpora
        # hold title-only documents, so an empty text is fine when there is a title.
        corpus[doc_id] = f"{title} {text}".strip() if title else text
        if not corpus[doc_id].strip():
            raise TrainingDataError(f"{where}: document {doc_id!r} has no title and no text")
    if not corpus:
        raise TrainingDataError(f"{file}: holds no documents")
    return corpus


# -- internals -----------------------------------------------------------------------------
def _string(
    row: dict[str, Any],
    key: str,
    where: str,
    *,
    required: bool = True,
    allow_number: bool = False,
) -> str | None:
    value = row.get(key)
    if value is None:
        if required:
            raise TrainingDataError(f"{where}: missing field {key!r}")
        return None
    if allow_number and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # some BEIR exports write numeric ids
    if not isinstance(value, str):
        raise TrainingDataError(
            f"{where}: field {key!r} must be a string, got {type(value).__name__}"
        )
    if required and not value.strip():
        raise TrainingDataError(f"{where}: field {key!r} is empty")
    return value


def _texts(row: dict[str, Any], key: str, where: str, *, required: bool) -> list[str]:
    value = row.get(key)
    if value is None:
        if required:
            raise TrainingDataError(f"{where}: missing field {key!r} (a list of documents)")
        return []
    if isinstance(value, str):
        value = [value]  # a lone string is one document, as FlagEmbedding's readers accept
    if not isinstance(value, list):
        raise TrainingDataError(
            f"{where}: field {key!r} must be a list of strings, got {type(value).__name__}"
        )
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise TrainingDataError(
                f"{where}: field {key!r}[{i}] must be a string, got {type(text).__name__}"
            )
        if not text.strip():
            raise TrainingDataError(f"{where}: field {key!r}[{i}] is empty")
    if required and not value:
        raise TrainingDataError(f"{where}: field {key!r} is an empty list; give at least one")
    return list(value)


def _example(row: dict[str, Any], where: str) -> TrainExample:
    query = _string(row, "query", where)
    assert query is not None  # required
    return TrainExample(
        query=query,
        pos=_texts(row, "pos", where, required=True),
        neg=_texts(row, "neg", where, required=False),
        instruction=_string(row, "instruction", where, required=False),
    )


def _load_beir(folder: Path) -> list[TrainExample]:
    qrels_path = folder / BEIR_TRAIN_QRELS
    if not qrels_path.is_file():
        splits = sorted(p.name for p in (folder / "qrels").glob("*.tsv"))
        found = f"; it has {', '.join(splits)}" if splits else ""
        raise TrainingDataError(
            f"{folder}: not a BEIR folder with a train split: {BEIR_TRAIN_QRELS} is missing{found}"
        )
    corpus = read_beir_corpus(folder / "corpus.jsonl")
    queries: dict[str, str] = {}
    queries_path = folder / "queries.jsonl"
    for number, row in json_objects(queries_path, TrainingDataError):
        where = f"{queries_path}:{number}"
        query_id = _string(row, "_id", where, allow_number=True)
        text = _string(row, "text", where)
        assert query_id is not None and text is not None  # required
        if query_id in queries:
            raise TrainingDataError(f"{where}: duplicate query id {query_id!r}")
        queries[query_id] = text
    judged: dict[str, tuple[list[str], list[str]]] = {}
    for number, (query_id, doc_id, score) in qrels_rows(qrels_path, TrainingDataError):
        where = f"{qrels_path}:{number}"
        if query_id not in queries:
            raise TrainingDataError(f"{where}: field 'query-id' names unknown query {query_id!r}")
        if doc_id not in corpus:
            raise TrainingDataError(f"{where}: field 'corpus-id' names unknown document {doc_id!r}")
        pos, neg = judged.setdefault(query_id, ([], []))
        (pos if score > 0 else neg).append(corpus[doc_id])
    examples = [
        TrainExample(query=queries[q], pos=judged[q][0], neg=judged[q][1])
        for q in queries
        if q in judged and judged[q][0]
    ]
    if not examples:
        raise TrainingDataError(f"{qrels_path}: no query has a positive judgement (score > 0)")
    return examples
