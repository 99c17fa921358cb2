"""Evaluation data: BEIR folders and question-answer files, read strictly, written atomically.

A :class:`Dataset` is three mappings, as in BEIR: ``corpus`` (document id -> text), ``queries``
(query id -> text) and ``qrels`` (query id -> {document id: graded relevance}). Every reader
checks its input and raises :class:`DataError` naming the file, line and field at fault.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen3_rag.datafiles import QRELS_HEADER, DataError, json_objects, qrels_rows, write_atomic


@dataclass(frozen=True)
class Dataset:
    """A retrieval test collection.

    Attributes:
        corpus: Document id -> text (a BEIR title is already joined to its text).
        queries: Query id -> text. Every query has at least one relevant document.
        qrels: Query id -> {document id: relevance}; relevance > 0 means relevant.
        name: A short name for tables and JSON output.
    """

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    name: str

    def sample(self, n: int, seed: int = 0) -> Dataset:
        """A dataset with ``n`` of the queries, drawn at random; the corpus stays whole.

        The same ``n``, ``seed`` and dataset always give the same queries (the draw is made over
        the sorted query ids, so it does not depend on file order). ``n`` at or above the number
        of queries returns every query.

        Raises:
            ValueError: If ``n`` is not a positive int.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sample size must be a positive int, got {n!r}")
        ids = sorted(self.queries)
        if n < len(ids):
            ids = sorted(random.Random(seed).sample(ids, n))
        return Dataset(
            corpus=dict(self.corpus),
            queries={q: self.queries[q] for q in ids},
            qrels={q: dict(self.qrels[q]) for q in ids},
            name=self.name,
        )

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, {len(self.corpus)} documents, "
            f"{len(self.queries)} queries, {sum(map(len, self.qrels.values()))} judgements)"
        )


def join_title(title: str, text: str) -> str:
    """A BEIR document's title and text as one string.

    BEIR's own dense-retrieval wrappers embed ``title + " " + text`` (stripped), and so does
    this project: a title-less document is its text unchanged.
    """
    return f"{title} {text}".strip() if title else text


# -- BEIR ----------------------------------------------------------------------------------
def _field(row: dict[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: missing field {key!r}")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and key == "_id":
        return str(value)  # some BEIR exports write numeric ids
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _read_corpus(path: Path) -> dict[str, str]:
    corpus: dict[str, str] = {}
    for number, row in json_objects(path):
        where = f"{path}:{number}"
        doc_id = _field(row, "_id", where)
        if not doc_id:
            raise DataError(f"{where}: field '_id' is empty")
        text = join_title(_field(row, "title", where, required=False), _field(row, "text", where))
        if not text.strip():
            raise DataError(f"{where}: document {doc_id!r} has empty 'title' and 'text'")
        if doc_id in corpus:
            raise DataError(f"{where}: duplicate document id {doc_id!r}")
        corpus[doc_id] = text
    if not corpus:
        raise DataError(f"{path}: no documents")
    return corpus


def _read_queries(path: Path) -> tuple[dict[str, str], dict[str, int]]:
    queries: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, row in json_objects(path):
        where = f"{path}:{number}"
        query_id = _field(row, "_id", where)
        if not query_id:
            raise DataError(f"{where}: field '_id' is empty")
        text = _field(row, "text", where)
        if not text.strip():
            raise DataError(f"{where}: query {query_id!r} has an empty 'text'")
        if query_id in queries:
            raise DataError(f"{where}: duplicate query id {query_id!r}")
        queries[query_id] = text
        lines[query_id] = number
    return queries, lines


def _read_qrels(
    path: Path, corpus: dict[str, str], queries: dict[str, str]
) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for number, (query_id, doc_id, relevance) in qrels_rows(path):
        where = f"{path}:{number}"
        if query_id not in queries:
            raise DataError(f"{where}: field 'query-id' names unknown query {query_id!r}")
        if doc_id not in corpus:
            raise DataError(f"{where}: field 'corpus-id' names unknown document {doc_id!r}")
        qrels.setdefault(query_id, {})[doc_id] = relevance
    return qrels


def load_beir(path: str | os.PathLike[str], split: str = "test") -> Dataset:
    """Read a BEIR folder: ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

    Corpus rows are ``{"_id", "title"?, "text"}``; a title is joined to the text with one space
    (see :func:`join_title`). Query rows are ``{"_id", "text"}``. The qrels file is
    tab-separated ``query-id, corpus-id, score`` with that header line. Queries without a
    relevant document in the split (as BEIR, which evaluates only judged queries) are left out.

    Args:
        path: The folder.
        split: The qrels file to use (``test``, ``dev``, ``train``...).

    Raises:
        DataError: For a missing file or a malformed line (file, line and field named), a
            duplicate id, an empty text, or qrels naming an unknown query or document.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder (a BEIR dataset is a folder)")
    for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
        if not (folder / name).is_file():
            raise DataError(
                f"{folder}: missing {name} (a BEIR folder has corpus.jsonl, "
                f"queries.jsonl and qrels/{split}.tsv)"
            )
    corpus = _read_corpus(folder / "corpus.jsonl")
    all_queries, _ = _read_queries(folder / "queries.jsonl")
    qrels = _read_qrels(folder / "qrels" / f"{split}.tsv", corpus, all_queries)
    judged = {q: d for q, d in qrels.items() if any(r > 0 for r in d.values())}
    if not judged:
        raise DataError(f"{folder / 'qrels' / f'{split}.tsv'}: no query has a relevant document")
    queries = {q: t for q, t in all_queries.items() if q in judged}
    return Dataset(
        corpus=corpus,
        queries=queries,
        qrels={q: judged[q] for q in queries},
        name=folder.resolve().name,
    )


def check_new_folder(path: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Refuse to write a dataset into a folder that already holds something.

    A dataset written over another one would mix them (or silently replace the one a user
    meant to keep), so a writer asks for a missing or empty folder unless told to overwrite.

    Raises:
        FileExistsError: If ``path`` is a file, or a non-empty folder and not ``overwrite``.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{str(folder)!r} is a file; give a folder for the dataset")
    if not overwrite and folder.is_dir():
        entries = sorted(p.name for p in folder.iterdir())
        if entries:
            raise FileExistsError(
                f"{str(folder)!r} is not empty ({len(entries)} entries, e.g. {entries[0]!r}); "
                "give a new folder, or overwrite=True (--overwrite) to replace its dataset files"
            )
    return folder


def write_beir(
    dataset: Dataset,
    path: str | os.PathLike[str],
    split: str = "test",
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``dataset`` as a BEIR folder that :func:`load_beir` reads back unchanged.

    Documents are written with an empty ``title`` (their text already holds any title). Each
    file is written to a temporary name and renamed, so a kill never leaves half a file.

    Args:
        dataset: The data.
        path: The folder; it must be missing or empty unless ``overwrite``.
        split: The qrels file name (``qrels/<split>.tsv``).
        overwrite: Replace ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` in a
            non-empty folder (its other files stay).

    Returns:
        The folder.

    Raises:
        FileExistsError: If ``path`` is a file, or a non-empty folder and not ``overwrite``.
    """
    folder = check_new_folder(path, overwrite)
    corpus = "".join(
        json.dumps({"_id": i, "title": "", "text": t}, ensure_ascii=False) + "\n"
        for i, t in dataset.corpus.items()
    )
    queries = "".join(
        json.dumps({"_id": i, "text": t}, ensure_ascii=False) + "\n"
        for i, t in dataset.queries.items()
    )
    qrels = "\t".join(QRELS_HEADER) + "\n"
    qrels += "".join(
        f"{q}\t{d}\t{r}\n" for q, docs in dataset.qrels.items() for d, r in docs.items()
    )
    write_atomic(folder / "corpus.jsonl", [corpus])
    write_atomic(folder / "queries.jsonl", [queries])
    write_atomic(folder / "qrels" / f"{split}.tsv", [qrels])
    return folder


# -- question-answer files -----------------------------------------------------------------
def _normalize(text: str) -> str:
    """The deduplication key: whitespace runs collapsed, ends stripped (case is kept)."""
    return re.sub(r"\s+", " ", text).strip()


def _qa_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        yield from json_objects(path)
        return
    if suffix not in (".csv", ".tsv"):
        raise DataError(f"{path}: unknown QA file type {suffix!r}; use .csv, .tsv or .jsonl")
    try:
        handle = path.open(encoding="utf-8-sig", newline="")
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from e
    with handle:
        reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
        try:
            for row in reader:
                # line_num is the reader's line after the row: right for one-line rows, and
                # the last line of a row with quoted newlines.
                yield reader.line_num, row
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: {e}") from e
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def load_qa(
    path: str | os.PathLike[str],
    question: str = "question",
    answer: str = "answer",
    *,
    name: str | None = None,
) -> Dataset:
    """Read a question-answer file (CSV, TSV or JSONL) as a retrieval dataset.

    The answers become the corpus, deduplicated (texts equal after collapsing whitespace are
    one document), and each question is relevant to its answer. A question asked twice (same
    text after collapsing whitespace) is one query, relevant to each of its answers.
    Document ids are ``d0, d1, ...`` and query ids ``q0, q1, ...``, in order of first appearance.

    Args:
        path: A ``.csv``/``.tsv`` file with a header row, or a ``.jsonl`` file of objects.
        question: The column (or JSON key) holding the questions.
        answer: The column (or JSON key) holding the answers.
        name: The dataset name; default: the file name without its suffix.

    Raises:
        DataError: For a missing column, or an empty question or answer (line and field named).
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{file}: no such file")
    docs: dict[str, str] = {}  # normalized answer -> id
    corpus: dict[str, str] = {}
    asked: dict[str, str] = {}  # normalized question -> id
    queries: dict[str, str] = {}
    qrels: dict[str, dict[str, int]] = {}
    for number, row in _qa_rows(file):
        where = f"{file}:{number}"
        values = []
        for key in (question, answer):
            if key not in row:
                columns = ", ".join(repr(k) for k in row if k is not None)
                raise DataError(f"{where}: no field {key!r} (the row has {columns})")
            value = row[key]
            if not isinstance(value, str):
                raise DataError(
                    f"{where}: field {key!r} must be a string, got {type(value).__name__}"
                )
            if not value.strip():
                raise DataError(f"{where}: field {key!r} is empty")
            values.append(value)
        q_text, a_text = values
        a_key = _normalize(a_text)
        if a_key not in docs:
            docs[a_key] = f"d{len(docs)}"
            corpus[docs[a_key]] = a_text
        q_key = _normalize(q_text)
        if q_key not in asked:
            asked[q_key] = f"q{len(asked)}"
            queries[asked[q_key]] = q_text
        qrels.setdefault(asked[q_key], {})[docs[a_key]] = 1
    if not queries:
        raise DataError(f"{file}: no rows")
    return Dataset(corpus=corpus, queries=queries, qrels=qrels, name=name or file.stem)


def load_dataset(
    path: str | os.PathLike[str],
    *,
    split: str = "test",
    question: str = "question",
    answer: str = "answer",
) -> Dataset:
    """A BEIR folder (:func:`load_beir`) or a QA file (:func:`load_qa`), by what ``path`` is."""
    if Path(path).is_dir():
        return load_beir(path, split)
    return load_qa(path, question, answer)
