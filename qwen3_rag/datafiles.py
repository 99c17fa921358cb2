"""The data files the applications share: JSON lines and BEIR's qrels layout, read and written.

Evaluation, fine-tuning, mining and synthesis all read user files line by line; one reader
gives them the same errors, each naming the file and line (``corpus.jsonl:7: invalid JSON``).
They all write through :func:`write_atomic`, so a killed run never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

#: The header line of a BEIR qrels file (``qrels/<split>.tsv``).
QRELS_HEADER = ("query-id", "corpus-id", "score")
#: One judgement: query id, document id, score.
QrelsRow = tuple[str, str, int]


def write_atomic(path: str | os.PathLike[str], lines: Iterable[str]) -> int:
    """Write ``lines`` (each ending as it should) to ``path``: all of them or nothing.

    They go to a temporary file beside ``path``, synced, then renamed over it; a kill at any
    moment leaves the old file or the new one. Parent folders are created.

    Returns:
        How many items of ``lines`` were written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            for line in lines:
                handle.write(line)
                count += 1
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


class DataError(ValueError):
    """Malformed input data; the message names the file, line and field."""


def json_lines(path: Path, error: type[DataError] = DataError) -> Iterator[tuple[int, Any]]:
    """``(line number, JSON value)`` of each non-blank line of a JSON-lines file.

    Args:
        path: The file.
        error: The :class:`DataError` subclass to raise (each application has its own).

    Raises:
        DataError: (``error``) If the file cannot be read, is not UTF-8, or a line is not JSON.
    """
    try:
        handle = path.open(encoding="utf-8")
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from e
    with handle:
        try:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except json.JSONDecodeError as e:
                    raise error(f"{path}:{number}: invalid JSON: {e.msg}") from e
                yield number, value
        except UnicodeDecodeError as e:
            raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def json_objects(
    path: Path, error: type[DataError] = DataError
) -> Iterator[tuple[int, dict[str, Any]]]:
    """As :func:`json_lines`, requiring every line to be a JSON object."""
    for number, value in json_lines(path, error):
        if not isinstance(value, dict):
            raise error(f"{path}:{number}: expected a JSON object, got {type(value).__name__}")
        yield number, value


def qrels_rows(path: Path, error: type[DataError] = DataError) -> Iterator[tuple[int, QrelsRow]]:
    """``(line number, (query id, document id, score))`` of each judgement in a qrels file.

    The header line (:data:`QRELS_HEADER`) and blank lines are skipped.

    Raises:
        DataError: (``error``) If the file cannot be read, is not UTF-8, or a line does not
            hold three tab-separated fields with an integer score.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise error(f"{path}: cannot read: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split("\t")]
        if number == 1 and tuple(cells) == QRELS_HEADER:
            continue
        if len(cells) != 3:
            raise error(
                f"{path}:{number}: expected 3 tab-separated fields (query-id, corpus-id, "
                f"score), got {len(cells)}"
            )
        try:
            score = int(cells[2])
        except ValueError:
            raise error(
                f"{path}:{number}: field 'score' must be an integer, got {cells[2]!r}"
            ) from None
        yield number, (cells[0], cells[1], score)
