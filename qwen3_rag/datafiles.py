"""The data files the applications share: JSON lines and BEIR's qrels layout, read and written.

Evaluation, fine-tuning, mining and synthesis all read user files line by line; one reader
gives them the same errors, each naming the file and line (``corpus.jsonl:7: invalid JSON``).
They all write through :func:`write_atomic`, so a killed run never leaves half a file.
"""

from __future__ import annotations

import io
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from qwen3_rag.core import Qwen3RagError

#: The header line of a BEIR qrels file (``qrels/<split>.tsv``).
QRELS_HEADER = ("query-id", "corpus-id", "score")
#: One judgement: query id, document id, score.
QrelsRow = tuple[str, str, int]


@contextmanager
def open_atomic(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that replaces ``path`` when the block ends without an error.

    The bytes go to a temporary file beside ``path``, synced, then renamed over it; a kill at
    any moment leaves the old file or the new one, and an error leaves the old one. Parent
    folders are created. The file gets the mode the umask gives any new file (0644 under umask
    022), as ``open(path, "w")`` would.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(target)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_beside(target: Path) -> tuple[int, Path]:
    """A new, uniquely named temporary file in ``target``'s folder: (descriptor, path)."""
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            # tempfile.mkstemp would create it 0600 whatever the umask; 0666 lets the kernel
            # apply the umask, so the renamed file has a new file's usual mode.
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"cannot create a temporary file beside {str(target)!r}")


def write_atomic(path: str | os.PathLike[str], lines: Iterable[str]) -> int:
    """Write ``lines`` (each ending as it should) to ``path``: all of them or nothing.

    See :func:`open_atomic`: a temporary file beside ``path``, synced, then renamed over it;
    UTF-8; the mode a new file gets under the umask.

    Returns:
        How many items of ``lines`` were written.
    """
    count = 0
    with open_atomic(path) as raw:
        handle = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        try:
            for line in lines:
                handle.write(line)
                count += 1
            handle.flush()
        finally:
            # Closing the wrapper would close the file that open_atomic still has to sync.
            handle.detach()
    return count


class DataError(Qwen3RagError, ValueError):
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
