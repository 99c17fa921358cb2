"""The persona pool and the retrieval of the candidates for a passage.

The built-in pool (``personas.txt``, a few hundred short English roles) was written for this
project; ``load_personas(path)`` reads a user's own file in the same format: one persona a line,
blank lines and lines starting with ``#`` ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np

from qwen3_rag.synth.prompts import PERSONA_INSTRUCTION

#: Longest persona accepted, in characters: the pool holds short roles, not biographies.
MAX_PERSONA_CHARS = 200


class Embedder(Protocol):
    """What synthesis needs from an embedding model (``Qwen3Embedder`` has it).

    Both methods return one row per text; rows need not be normalised.
    """

    def embed_queries(self, texts: list[str], instruction: str | None = None) -> np.ndarray:
        """Embed queries with an instruction (the model's default when None)."""
        ...

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Embed documents (no instruction)."""
        ...


def _parse(text: str, where: str) -> list[str]:
    personas: list[str] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = " ".join(raw.split())
        if not line or line.startswith("#"):
            continue
        if len(line) > MAX_PERSONA_CHARS:
            raise ValueError(
                f"{where}, line {number}: a persona longer than {MAX_PERSONA_CHARS} characters"
            )
        if line.casefold() not in seen:  # the LLM's choice is matched ignoring case
            seen.add(line.casefold())
            personas.append(line)
    return personas


def load_personas(path: str | Path | None = None) -> list[str]:
    """The personas in ``path``, or the built-in pool when None.

    Raises:
        ValueError: If the file cannot be read, holds no persona, or has an overlong line (the
            message names the file and line).
    """
    if path is None:
        text = resources.files("qwen3_rag.synth").joinpath("personas.txt").read_text("utf-8")
        return _parse(text, "personas.txt")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the personas file {str(path)!r}: {e}") from e
    personas = _parse(text, str(path))
    if not personas:
        raise ValueError(f"the personas file {str(path)!r} holds no persona")
    return personas


def _normalise(vectors: np.ndarray) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return np.asarray(matrix / np.maximum(norms, 1e-12), dtype=np.float32)


class PersonaRetriever:
    """The personas closest to a passage, by cosine similarity of their embeddings.

    The passage is embedded as a query (with :data:`PERSONA_INSTRUCTION`) and the personas as
    documents, the asymmetric use the Qwen3 embedders are trained for.

    Args:
        embedder: The embedding model.
        personas: The pool (at least one persona).
    """

    def __init__(self, embedder: Embedder, personas: Sequence[str]) -> None:
        if not personas:
            raise ValueError("the persona pool is empty")
        self.embedder = embedder
        self.personas = list(personas)
        self._matrix = _normalise(embedder.embed_documents(self.personas))

    def top(self, passages: list[str], k: int = 5) -> list[list[str]]:
        """The ``k`` best personas for each passage, best first (ties by pool order)."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if not passages:
            return []
        queries = _normalise(self.embedder.embed_queries(passages, instruction=PERSONA_INSTRUCTION))
        scores = queries @ self._matrix.T
        k = min(k, len(self.personas))
        # A stable sort on the negated scores keeps pool order among equal scores.
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return [[self.personas[i] for i in row] for row in order]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped matrices."""
    return np.asarray(np.sum(_normalise(a) * _normalise(b), axis=1), dtype=np.float32)
