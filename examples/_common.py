"""Arguments shared by the demo scripts."""

from __future__ import annotations

import argparse
from pathlib import Path

from qwen3_rag import DEFAULT_EMBEDDING_MODEL, DEFAULT_RERANKER_MODEL

DATA = Path(__file__).resolve().parent / "data"


def parser(description: str, default_db: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("question", nargs="?", default="How should I rotate an API key?")
    p.add_argument("--data", default=str(DATA), help="folder of .txt/.md files to index")
    p.add_argument("--db", default=default_db, help="Chroma folder")
    p.add_argument("--embedding-model", default=DEFAULT_EMBEDDING_MODEL, help="hub id or folder")
    p.add_argument("--reranker-model", default=DEFAULT_RERANKER_MODEL, help="hub id or folder")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    p.add_argument("--k", type=int, default=10, help="vector-search candidates")
    p.add_argument("--top-n", type=int, default=3, help="results kept after reranking")
    return p


def paragraphs(folder: str) -> list[tuple[str, str]]:
    """(source, paragraph) pairs: a simple splitter, enough for the sample corpus."""
    out = []
    for path in sorted(Path(folder).glob("*")):
        if path.suffix in (".txt", ".md"):
            for part in path.read_text(encoding="utf-8").split("\n\n"):
                text = part.strip()
                if text and not (text.startswith("#") and "\n" not in text):  # bare headings
                    out.append((path.name, text))
    return out
