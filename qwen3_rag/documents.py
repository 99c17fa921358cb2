"""Files to chunks: the readers (.txt, .md, .pdf) and the chunker every indexer shares.

A chunk's id depends only on its source path, page, offset and text, so re-indexing a folder
is idempotent whichever engine (the single-process CLI, Ray) does it.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_SUFFIXES = (".txt", ".md", ".pdf")


class DocumentError(ValueError):
    """A path given to :func:`find_files` does not exist or holds no supported file."""


@dataclass
class Chunk:
    """One piece of a source file, with an id derived from its source and content."""

    id: str
    text: str
    metadata: dict[str, Any]


def _source_path(path: Path) -> Path:
    """The absolute path as the user reached it: symlinks are kept, not resolved."""
    return Path(os.path.abspath(path))


def find_files(paths: Sequence[str]) -> list[Path]:
    """Every supported file under ``paths`` (files or folders), sorted, each once.

    Paths are absolute but keep symlinks as given, so a chunk's ``source`` is the path the user
    indexed; removing a link makes its chunks stale like removing a file.
    """
    found: set[Path] = set()
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists():
            raise DocumentError(f"path not found: {raw}")
        if path.is_file():
            if path.suffix.lower() not in SUPPORTED_SUFFIXES:
                raise DocumentError(
                    f"{raw}: unsupported file type (use {', '.join(SUPPORTED_SUFFIXES)})"
                )
            found.add(_source_path(path))
        else:
            found.update(
                _source_path(p)
                for p in path.rglob("*")
                if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
            )
    if not found:
        raise DocumentError(
            f"no {', '.join(SUPPORTED_SUFFIXES)} files found in: {', '.join(map(str, paths))}"
        )
    return sorted(found)


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
            raise ValueError(f"cannot read this PDF: {type(e).__name__}: {e}") from e
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
