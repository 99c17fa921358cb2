"""Chroma adapter: :class:`Qwen3EmbeddingFunction`, persisted and rebuilt from its config.

Example:
    >>> import chromadb
    >>> from qwen3_rag.integrations.chroma import Qwen3EmbeddingFunction, open_collection
    >>> client = chromadb.PersistentClient("./db")  # doctest: +SKIP
    >>> docs = open_collection(client, "docs", Qwen3EmbeddingFunction())  # doctest: +SKIP
    >>> docs.query(query_texts=["what is RAG?"], n_results=5)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from typing import Any

from qwen3_rag.core import DEFAULT_EMBEDDING_MODEL, Qwen3Embedder

from ._common import EMBEDDER_OPTIONS, build_embedder, missing_extra

try:
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
    from chromadb.errors import NotFoundError
    from chromadb.utils.embedding_functions import register_embedding_function
except ImportError as e:  # pragma: no cover - exercised in a clean environment test
    raise missing_extra("chromadb", "chroma") from e

__all__ = ["ConfigMismatchError", "Qwen3EmbeddingFunction", "clean_metadata", "open_collection"]

#: The name under which Chroma stores and finds this embedding function.
EF_NAME = "qwen3_rag"
#: The persisted config: what decides the vectors, never devices, secrets or free kwargs.
_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "model": (str,),
    "revision": (str, type(None)),
    "dimensions": (int, type(None)),
    "instruction": (str,),
    "max_length": (int,),
}
#: Keys whose change makes stored vectors incomparable with new ones.
_VECTOR_KEYS = ("model", "revision", "dimensions")


class ConfigMismatchError(ValueError):
    """A collection was built with another model or dimension than the one given now."""


@register_embedding_function
class Qwen3EmbeddingFunction(EmbeddingFunction[Documents]):
    """Qwen3-Embedding as a Chroma embedding function.

    Documents (``add``/``upsert``) are embedded as they are; ``query_texts`` go through
    :meth:`embed_query` with the instruction (Chroma >= 1.1 calls it for queries). Vectors are
    unit length, so the default space is cosine.

    Args:
        model: Hub id, local folder, or a built :class:`~qwen3_rag.Qwen3Embedder`.
        instruction: Task for queries; None keeps the model's default, "" sends none.
        **options: Core options (``device``, ``dtype``, ``max_length``, ``dimensions``,
            ``revision``, ...); only model, revision, dimensions, instruction and max_length
            are persisted in the collection.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Qwen3Embedder = DEFAULT_EMBEDDING_MODEL,
        *,
        instruction: str | None = None,
        **options: Any,
    ) -> None:
        unknown = sorted(set(options) - set(EMBEDDER_OPTIONS))
        if unknown:
            raise TypeError(f"unknown option(s) for Qwen3EmbeddingFunction: {', '.join(unknown)}")
        self._embedder = build_embedder(model, options)
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
        self.instruction = self._embedder.instruction if instruction is None else instruction

    @property
    def embedder(self) -> Qwen3Embedder:
        """The core embedder behind this function."""
        return self._embedder

    def __call__(self, input: Documents) -> Embeddings:
        """Embed documents; returns one float32 vector per text."""
        return list(self._embedder.embed_documents(_as_texts(input)))

    def embed_query(self, input: Documents) -> Embeddings:
        """Embed queries, with the instruction; returns one float32 vector per text."""
        texts = _as_texts(input)
        if not texts:
            raise ValueError("embed_query needs at least one query text")
        return list(self._embedder.embed_queries(texts, instruction=self.instruction))

    @staticmethod
    def name() -> str:
        """Name stored in the collection's configuration."""
        return EF_NAME

    def default_space(self) -> Space:
        """Cosine: the vectors are normalised."""
        return "cosine"

    def supported_spaces(self) -> list[Space]:
        """Every space works on unit vectors; cosine and ip rank identically."""
        return ["cosine", "ip", "l2"]

    def get_config(self) -> dict[str, Any]:
        """What Chroma persists; enough to rebuild identical vectors elsewhere."""
        return {
            "model": self._embedder.model_name,
            "revision": self._embedder.revision,
            "dimensions": self._embedder.output_dimensions,
            "instruction": self.instruction,
            "max_length": self._embedder.max_length,
        }

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        """Check a config read from disk before anything is loaded from it.

        Raises:
            ValueError: For unknown keys (e.g. ``trust_remote_code``), missing keys or wrong
                types; the message names the key.
        """
        if not isinstance(config, dict):
            raise ValueError(f"{EF_NAME} config must be a dict, got {type(config).__name__}")
        unknown = sorted(set(config) - set(_CONFIG_TYPES))
        if unknown:
            raise ValueError(f"{EF_NAME} config has unknown key(s): {', '.join(unknown)}")
        for key, types in _CONFIG_TYPES.items():
            if key not in config:
                raise ValueError(f"{EF_NAME} config is missing {key!r}")
            value = config[key]
            if isinstance(value, bool) or not isinstance(value, types):
                raise ValueError(f"{EF_NAME} config {key!r} has a bad value: {value!r}")
        if not config["model"].strip():
            raise ValueError(f"{EF_NAME} config 'model' is empty")

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> Qwen3EmbeddingFunction:
        """Rebuild the function from a persisted, validated config."""
        Qwen3EmbeddingFunction.validate_config(config)
        return Qwen3EmbeddingFunction(
            config["model"],
            instruction=config["instruction"],
            revision=config["revision"],
            dimensions=config["dimensions"],
            max_length=config["max_length"],
        )

    def validate_config_update(
        self, old_config: dict[str, Any], new_config: dict[str, Any]
    ) -> None:
        """Refuse changes that would mix incomparable vectors in one collection."""
        _check_compatible(old_config, new_config, "collection")


def _as_texts(input: Any) -> list[str]:
    # Chroma passes a list of strings; a bare string would be embedded per character otherwise.
    if isinstance(input, str):
        raise TypeError("input must be a list of strings, got a single str")
    return list(input)


def _check_compatible(stored: dict[str, Any], given: dict[str, Any], where: str) -> None:
    for key in _VECTOR_KEYS:
        if stored.get(key) != given.get(key):
            raise ConfigMismatchError(
                f"the {where} was built with {key}={stored.get(key)!r}, but the embedding "
                f"function has {key}={given.get(key)!r}; use the same {key} or a new collection"
            )


def open_collection(
    client: Any,
    name: str,
    embedding_function: Qwen3EmbeddingFunction,
    *,
    create: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Any:
    """Get (or create) a collection, refusing one built with another model or dimension.

    Chroma itself only compares embedding-function names, so a dimension change would surface
    later as a shape error on add or query; this check fails at once, naming both values.

    Raises:
        ConfigMismatchError: If the stored model, revision or dimensions differ.
        ValueError: If the collection uses another embedding function.
        chromadb.errors.NotFoundError: If it does not exist and ``create`` is False.
    """
    try:
        collection = client.get_collection(name, embedding_function=embedding_function)
    except NotFoundError:
        if not create:
            raise
        return client.create_collection(
            name, embedding_function=embedding_function, metadata=metadata
        )
    stored = (collection.configuration_json or {}).get("embedding_function") or {}
    if stored.get("name") != EF_NAME:
        raise ValueError(
            f"collection {name!r} uses the embedding function {stored.get('name')!r}, "
            f"not {EF_NAME!r}"
        )
    _check_compatible(
        stored.get("config") or {}, embedding_function.get_config(), f"collection {name!r}"
    )
    return collection


_SCALARS = (str, int, float, bool)


def clean_metadata(metadata: dict[str, Any] | None, *, sep: str = ".") -> dict[str, Any] | None:
    """Make loader metadata storable in Chroma, which takes only flat scalar values.

    Empty metadata becomes None; nested dicts are flattened to ``parent.child`` keys; ``None``
    values are dropped; lists of scalars are kept. Anything else (a list of dicts, a date, an
    object) is refused rather than silently turned into text.

    Raises:
        ValueError: Naming the key whose value Chroma cannot store.

    Example:
        >>> clean_metadata({"source": "a.md", "loc": {"page": 2}, "tags": ["x"], "none": None})
        {'source': 'a.md', 'loc.page': 2, 'tags': ['x']}
        >>> clean_metadata({}) is None
        True
    """
    if metadata is None:
        return None
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}{sep}{key}" if prefix else str(key), inner)
        elif isinstance(value, _SCALARS):
            flat[prefix] = value
        elif (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, _SCALARS) for v in value)
        ):
            flat[prefix] = list(value)
        else:
            raise ValueError(
                f"metadata key {prefix!r} holds a {type(value).__name__} that Chroma cannot "
                "store; convert it to a string, number, bool or a list of those"
            )

    walk("", metadata)
    return flat or None
