"""Files to chunks: the readers (.txt, .md, .pdf) and the chunker every indexer shares.

A chunk's id depends only on its source path, page, offset and text, so re-indexing a folder
is idempotent whichever engine (the single-process one, Ray) does it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import IndexingError

SUPPORTED_SUFFIXES = (".txt", ".md", ".pdf")


class DocumentError(IndexingError):
    """A path given to :func:`find_files` does not exist or holds no supported file."""


@dataclass
class Chunk:
    """One piece of a source file, with an id derived from its source and content."""

    id: str
    text: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class SkippedSource:
    """A path under an indexed folder that was not read, and why.

    Attributes:
        path: The absolute path, as the user reached it.
        reason: One line: an unreadable folder, a dangling link, a FIFO...
    """

    path: str
    reason: str


def _source_path(path: Path) -> Path:
    """The absolute path as the user reached it: symlinks are kept, not resolved."""
    return Path(os.path.abspath(path))


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _check_file(path: Path) -> str | None:
    """Why ``path`` (a supported name) cannot be read as a file, or None if it can."""
    try:
        mode = path.stat().st_mode  # follows a link: a link to a file is read as the file
    except FileNotFoundError:
        return "a dangling symbolic link" if path.is_symlink() else "it disappeared"
    except OSError as e:
        return f"cannot read it: {e.strerror}"
    if stat.S_ISREG(mode):
        return None
    return f"{_kind(mode)}, not a regular file"


def _unreadable(skipped: dict[str, str], error: OSError) -> None:
    """``os.walk``'s error handler: a folder it cannot list is a skipped source."""
    where = _source_path(Path(error.filename))
    skipped[str(where)] = f"cannot read this folder: {error.strerror}"


def find_sources(paths: Sequence[str]) -> tuple[list[Path], list[SkippedSource]]:
    """Every supported file under ``paths`` (files or folders), sorted, and what was skipped.

    Paths are absolute but keep symlinks as given, so a chunk's ``source`` is the path the user
    indexed; removing a link makes its chunks stale like removing a file. Links to files are
    read; links to folders are not followed (a folder reached twice, or a link loop, would be
    indexed twice or forever), and are listed as skipped. So are folders that cannot be read,
    dangling links, FIFOs, sockets and devices with a supported name: nothing vanishes silently.

    Raises:
        DocumentError: If a path does not exist, is an unsupported file, or no supported file
            was found.
    """
    found: set[Path] = set()
    skipped: dict[str, str] = {}
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise DocumentError(f"path not found: {raw}")
        if not path.is_dir():
            if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise DocumentError(
                    f"{raw}: unsupported file type (use {', '.join(SUPPORTED_SUFFIXES)})"
                )
            why = _check_file(path)
            if why is not None:
                raise DocumentError(f"{raw}: {why}")
            found.add(_source_path(path))
            continue

        for folder, dirs, names in os.walk(path, onerror=functools.partial(_unreadable, skipped)):
            for name in dirs:
                if os.path.islink(os.path.join(folder, name)):
                    where = _source_path(Path(folder, name))
                    skipped[str(where)] = "a symbolic link to a folder (not followed)"
            for name in names:
                file = Path(folder, name)
                if file.suffix.lower() not in SUPPORTED_SUFFIXES:
                    continue
                why = _check_file(file)
                if why is None:
                    found.add(_source_path(file))
                else:
                    skipped[str(_source_path(file))] = why
    if not found:
        raise DocumentError(
            f"no {', '.join(SUPPORTED_SUFFIXES)} files found in: {', '.join(map(str, paths))}"
        )
    return sorted(found), [SkippedSource(p, r) for p, r in sorted(skipped.items())]


def find_files(paths: Sequence[str]) -> list[Path]:
    """Every supported file under ``paths`` (see :func:`find_sources`), sorted, each once."""
    return find_sources(paths)[0]


def is_gone(source: str) -> bool:
    """True only when a stored source no longer exists (ENOENT, ENOTDIR; a dangling link).

    A file that cannot be reached for any other reason (a folder made unreadable, an I/O
    error) is not gone: its chunks are kept until it can be read or really disappears.
    """
    try:
        os.stat(source)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return not os.path.isfile(source)


def decode_text(data: bytes) -> tuple[str, int]:
    r"""UTF-8 text (a BOM dropped), with undecodable bytes as U+FFFD, and how many were replaced.

    Example:
        >>> text, replaced = decode_text(b"caf\xc3\xa9 \xff")
        >>> text == "café \ufffd", replaced
        (True, 1)
    """
    try:
        return data.decode("utf-8-sig"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8-sig", errors="replace")
        # U+FFFD already in the file is text, not a replacement.
        original = data.count("\ufffd".encode())
        return text, text.count("\ufffd") - original


def read_text(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """A file's text as (text, metadata) parts, one per PDF page, and replaced characters."""
    if path.suffix.lower() == ".pdf":
        from pypdf import PdfReader

        try:
            reader = PdfReader(str(path))
            return [
                (page.extract_text() or "", {"page": number})
                for number, page in enumerate(reader.pages, start=1)
            ], 0
        except Exception as e:  # pypdf raises many types (KeyError, struct.error...) on damage
            raise DocumentError(f"cannot read this PDF: {type(e).__name__}: {e}") from e
    text, replaced = decode_text(path.read_bytes())
    return [(text, {})], replaced


@functools.lru_cache(maxsize=4)
def _splitter(chunk_size: int, chunk_overlap: int) -> Any:
    # One splitter per run: building it per file costs more than splitting a small file.
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    return RecursiveCharacterTextSplitter(
        chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True
    )


def chunk_file(path: Path, chunk_size: int, chunk_overlap: int) -> tuple[list[Chunk], int]:
    """Split a file into chunks whose ids depend only on its path and the chunk's content.

    Returns:
        The chunks and how many undecodable bytes were replaced with U+FFFD.
    """
    from qwen3_rag.integrations.chroma import clean_metadata

    splitter = _splitter(chunk_size, chunk_overlap)
    source = str(path)
    chunks: list[Chunk] = []
    parts, replaced = read_text(path)
    for text, extra in parts:
        for doc in splitter.create_documents([text]):
            if not doc.page_content.strip():
                continue
            start = int(doc.metadata["start_index"])
            key = f"{source}\0{extra.get('page', 0)}\0{start}\0{doc.page_content}"
            chunk_id = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
            metadata = {"source": source, "start_index": start, "chunk": len(chunks), **extra}
            chunks.append(Chunk(chunk_id, doc.page_content, clean_metadata(metadata) or {}))
    return chunks, replaced
