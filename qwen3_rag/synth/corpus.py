"""The passages to write queries for: a folder of files, a JSON-lines file, or Chroma.

A folder goes through the same readers and chunker as ``qwen3-rag index`` (so passage ids are
the chunk ids the index uses); a JSON-lines file holds one object a line with ``text`` and an
optional ``_id`` or ``id``; a Chroma collection gives its stored documents and ids.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwen3_rag.indexing.options import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Passage:
    """One passage: its id (unique in the corpus) and its text."""

    id: str
    text: str


def _check_unique(passages: list[Passage], where: str) -> list[Passage]:
    seen: set[str] = set()
    for passage in passages:
        if passage.id in seen:
            raise ValueError(f"{where}: the passage id {passage.id!r} occurs twice")
        seen.add(passage.id)
    return passages


def passages_from_folder(
    paths: list[str],
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> tuple[list[Passage], list[str]]:
    """Chunks of the supported files under ``paths``, as ``qwen3-rag index`` makes them.

    Returns:
        The passages (duplicate chunks once) and the files skipped as unreadable, with why.

    Raises:
        DocumentError: If a path does not exist or holds no supported file.
    """
    from qwen3_rag.indexing.documents import chunk_file, find_files

    passages: dict[str, Passage] = {}
    skipped: list[str] = []
    for path in find_files(paths):
        try:
            chunks, _ = chunk_file(path, chunk_size, chunk_overlap)
        except (OSError, ValueError) as e:
            logger.warning("skipped %s: %s", path, e)
            skipped.append(f"{path}: {e}")
            continue
        for chunk in chunks:
            passages.setdefault(chunk.id, Passage(chunk.id, chunk.text))
    return list(passages.values()), skipped


def passages_from_jsonl(path: str | Path) -> list[Passage]:
    """Passages from a JSON-lines file: ``{"text": ..., "_id" or "id": ...}`` a line.

    A line without an id gets ``line-N``. Blank lines are skipped.

    Raises:
        ValueError: Naming the file and line of a bad line, a missing or empty ``text``, or a
            duplicate id.
    """
    where = str(path)
    passages: list[Passage] = []
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
    except OSError as e:
        raise ValueError(f"cannot read {where!r}: {e.strerror}") from e
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                passages.append(_passage_from_line(line, f"{where}, line {number}", number))
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: not UTF-8 text ({e})") from e
    if not passages:
        raise ValueError(f"{where!r} holds no passage")
    return _check_unique(passages, where)


def _passage_from_line(line: str, where: str, number: int) -> Passage:
    try:
        row: Any = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg})") from e
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected an object with a 'text' field")
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: 'text' must be a non-empty string")
    raw_id = row.get("_id", row.get("id"))
    if raw_id is None:
        raw_id = f"line-{number}"
    if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool) or not str(raw_id).strip():
        raise ValueError(f"{where}: the id must be a non-empty string or an integer")
    return Passage(str(raw_id), text)


def passages_from_collection(collection: Any, page: int = 1000) -> list[Passage]:
    """The documents stored in a Chroma collection, with their ids (empty ones skipped)."""
    passages: list[Passage] = []
    offset = 0
    while True:
        got = collection.get(include=["documents"], limit=page, offset=offset)
        for passage_id, text in zip(got["ids"], got["documents"] or [], strict=True):
            if isinstance(text, str) and text.strip():
                passages.append(Passage(str(passage_id), text))
        if len(got["ids"]) < page:
            return passages
        offset += page
