"""Chroma adapter: :class:`Qwen3EmbeddingFunction`, persisted and rebuilt from its config.

Example:
    >>> import chromadb
    >>> from qwen3_rag.integrations.chroma import Qwen3EmbeddingFunction, open_collection
    >>> client = chromadb.PersistentClient("./db")  # doctest: +SKIP
    >>> docs = open_collection(client, "docs", Qwen3EmbeddingFunction())  # doctest: +SKIP
    >>> docs.query(query_texts=["what is RAG?"], n_results=5)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from qwen3_rag.core import DEFAULT_EMBEDDING_MODEL, EmbedderConfig, Qwen3Embedder, Qwen3RagError
from qwen3_rag.core.config import build_config
from qwen3_rag.core.spec import CHROMA_FUNCTION_NAME
from qwen3_rag.remote import RemoteEmbedder

from ._common import build_embedder, identity, identity_names, missing_extra, option_names

try:
    from chromadb.api.types import Documents, EmbeddingFunction, Embeddings, Space
    from chromadb.errors import NotFoundError
    from chromadb.utils.embedding_functions import register_embedding_function
except ImportError as e:  # pragma: no cover - exercised in a clean environment test
    raise missing_extra("chromadb", "chroma") from e

__all__ = [
    "CONFIG_KEYS",
    "ConfigMismatchError",
    "Qwen3EmbeddingFunction",
    "check_stored_config",
    "clean_metadata",
    "open_collection",
]

#: The name under which Chroma stores and finds this embedding function.
EF_NAME = CHROMA_FUNCTION_NAME
#: The persisted config: the model and the options that decide the vectors (the config fields
#: marked ``persist``, plus the revision); never devices, secrets or free kwargs. These are the
#: settings a collection is built with, and every opener (this module's
#: :func:`open_collection`, the indexer, the CLI, the server's search, evaluation) must match
#: them all: a collection embeds its queries one way only.
CONFIG_KEYS = ("model", *identity_names(EmbedderConfig))
#: Functions rebuilt from a persisted config stay alive this long (most recent first): Chroma
#: rebuilds the function on every call of a collection opened without one, and the model
#: would otherwise be freed and loaded again each time.
REBUILT_KEPT = 4
_rebuilt: OrderedDict[str, Qwen3EmbeddingFunction] = OrderedDict()
_rebuilt_lock = threading.Lock()


class ConfigMismatchError(Qwen3RagError, ValueError):
    """A collection was built with other settings (:data:`CONFIG_KEYS`) than the ones given now.

    Attributes:
        collection: The collection's name.
        key: The first setting that differs.
        stored: Its value in the collection.
        given: The value asked for now.
    """

    def __init__(self, collection: str, key: str, stored: Any, given: Any) -> None:
        super().__init__(
            f"collection {collection!r} was built with {key}={stored!r}, but this asks for "
            f"{key}={given!r}; use the same {key}, or rebuild the collection to re-embed "
            "everything with the new value"
        )
        self.collection = collection
        self.key = key
        self.stored = stored
        self.given = given


@register_embedding_function
class Qwen3EmbeddingFunction(EmbeddingFunction[Documents]):
    """Qwen3-Embedding as a Chroma embedding function.

    Documents (``add``/``upsert``) are embedded as they are; ``query_texts`` go through
    :meth:`embed_query` with the instruction (Chroma >= 1.1 calls it for queries). Vectors are
    unit length, so the default space is cosine.

    Args:
        model: Hub id, local folder, a built :class:`~qwen3_rag.Qwen3Embedder`, or a
            :class:`~qwen3_rag.RemoteEmbedder` (the model on a server).
        instruction: Task for queries; None keeps the model's default, "" sends none.
        **options: Any field of :class:`~qwen3_rag.core.EmbedderConfig` (``device``,
            ``dtype``, ``max_length``, ``dimensions``, ``revision``, ...); only the model and
            the options that decide the vectors (:data:`CONFIG_KEYS`) are persisted.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Qwen3Embedder | RemoteEmbedder = DEFAULT_EMBEDDING_MODEL,
        *,
        instruction: str | None = None,
        **options: Any,
    ) -> None:
        if "model_name" in options:
            raise TypeError("Qwen3EmbeddingFunction takes the model as its first argument (model=)")
        unknown = sorted(set(options) - set(option_names(EmbedderConfig)))
        if unknown:
            raise TypeError(
                f"unknown option(s) for Qwen3EmbeddingFunction: {', '.join(unknown)}; valid: "
                f"{', '.join(option_names(EmbedderConfig))}"
            )
        if instruction is not None and not isinstance(instruction, str):
            raise TypeError(f"instruction must be a str, got {type(instruction).__name__}")
        self._embedder = build_embedder(model, {**options, "instruction": instruction})
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
        """What Chroma persists: enough to rebuild identical vectors elsewhere."""
        config = identity(self._embedder, self.instruction)
        # The output size, not None: collections record the length their vectors have.
        config["dimensions"] = self._embedder.output_dimensions
        return {key: config[key] for key in CONFIG_KEYS}

    @staticmethod
    def validate_config(config: dict[str, Any]) -> None:
        """Check a config read from disk before anything is loaded from it.

        The values are checked by :class:`~qwen3_rag.core.EmbedderConfig` itself; a
        ``dimensions`` above the model's size is refused from its ``config.json`` before the
        weights load.

        Raises:
            ValueError: For a config that is not a dict, unknown keys (e.g.
                ``trust_remote_code``), missing keys or bad values; the message names the key.
        """
        if not isinstance(config, dict):
            raise ValueError(f"{EF_NAME} config must be a dict, got {type(config).__name__}")
        unknown = sorted(set(config) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"{EF_NAME} config has unknown key(s): {', '.join(unknown)}")
        missing = [key for key in CONFIG_KEYS if key not in config]
        if missing:
            raise ValueError(f"{EF_NAME} config is missing {', '.join(map(repr, missing))}")
        model = config["model"]
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"{EF_NAME} config 'model' must be a non-empty str, got {model!r}")
        options = {k: config[k] for k in CONFIG_KEYS[1:] if config[k] is not None}
        try:
            build_config(EmbedderConfig, None, options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{EF_NAME} config has a bad value: {e}") from e

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> Qwen3EmbeddingFunction:
        """Rebuild the function from a persisted config, validated first.

        The last :data:`REBUILT_KEPT` functions rebuilt are kept and returned again for the
        same config, so a collection opened without a function loads its model once, not on
        every call (Chroma rebuilds the function each time).
        """
        Qwen3EmbeddingFunction.validate_config(config)
        key = json.dumps(config, sort_keys=True)
        with _rebuilt_lock:
            found = _rebuilt.get(key)
            if found is not None:
                _rebuilt.move_to_end(key)
                return found
        options = {k: config[k] for k in CONFIG_KEYS[1:] if k != "instruction"}
        built = Qwen3EmbeddingFunction(
            config["model"], instruction=config["instruction"], **options
        )
        with _rebuilt_lock:
            built = _rebuilt.setdefault(key, built)
            _rebuilt.move_to_end(key)
            while len(_rebuilt) > REBUILT_KEPT:
                _rebuilt.popitem(last=False)
        return built

    @staticmethod
    def forget_rebuilt() -> None:
        """Drop the kept rebuilt functions, so their models can be freed."""
        with _rebuilt_lock:
            _rebuilt.clear()

    def validate_config_update(
        self, old_config: dict[str, Any], new_config: dict[str, Any]
    ) -> None:
        """Refuse changes that would mix incomparable vectors, or queries embedded two ways."""
        check_stored_config(old_config, new_config, "collection")


def _as_texts(input: Any) -> list[str]:
    # Chroma passes a list of strings; a bare string would be embedded per character otherwise.
    if isinstance(input, str):
        raise TypeError("input must be a list of strings, got a single str")
    return list(input)


def check_stored_config(stored: Mapping[str, Any], given: Mapping[str, Any], name: str) -> None:
    """Refuse ``given`` settings that differ from a collection's ``stored`` ones.

    The one check of :data:`CONFIG_KEYS` (model, revision, max_length, dimensions,
    instruction): a different model, revision or size makes the vectors incomparable, a
    different ``max_length`` or instruction embeds the same text another way. A key the
    stored config lacks (a collection from an older version) is not checked.

    Raises:
        ConfigMismatchError: Naming the collection, the setting and both values.
    """
    for key in CONFIG_KEYS:
        if key in stored and key in given and stored[key] != given[key]:
            raise ConfigMismatchError(name, key, stored[key], given[key])


def open_collection(
    client: Any,
    name: str,
    embedding_function: Qwen3EmbeddingFunction,
    *,
    create: bool = True,
    metadata: dict[str, Any] | None = None,
) -> Any:
    """Get (or create) a collection, refusing one built with other settings.

    Chroma itself only compares embedding-function names, so a dimension change would surface
    later as a shape error on add or query, and another instruction or ``max_length`` would
    silently embed queries differently; this check fails at once, naming both values.

    The collection records the function's config (:data:`CONFIG_KEYS`), so any process can
    reopen it without passing a function: plain ``chromadb`` needs
    ``import qwen3_rag.integrations.chroma`` first (importing any ``qwen3_rag`` adapter does
    it), which registers the name ``"qwen3_rag"`` with Chroma.

    Raises:
        ConfigMismatchError: If a stored setting (:data:`CONFIG_KEYS`) differs.
        ValueError: If the collection uses another embedding function, or its stored config is
            damaged (not a dict).
        chromadb.errors.NotFoundError: If it does not exist and ``create`` is False.
        RemoteError: If the function's model is a server that cannot tell its output size.
    """
    # Asked first, where its error reaches the caller: Chroma catches an error of get_config
    # and records the collection with a "legacy" config, silently (a RemoteEmbedder whose
    # server is down, asked for its width).
    wanted = embedding_function.get_config()
    try:
        collection = client.get_collection(name, embedding_function=embedding_function)
    except NotFoundError:
        if not create:
            raise
        return client.create_collection(
            name, embedding_function=embedding_function, metadata=metadata
        )
    except ValueError as e:
        # Chroma refuses a collection that recorded another function ("Embedding function
        # conflict"), without saying what to do: the check below words it like the others.
        stored = _stored_function(
            client.get_collection(name, embedding_function=None).configuration_json, name
        )
        if stored.get("name") in (None, EF_NAME):
            raise
        raise ValueError(_foreign_collection(name, stored.get("name"))) from e
    stored = _stored_function(collection.configuration_json, name)
    if stored.get("name") != EF_NAME:
        raise ValueError(_foreign_collection(name, stored.get("name")))
    config = stored.get("config")
    if not isinstance(config, dict):
        raise ValueError(
            f"collection {name!r} has a damaged {EF_NAME} config (a "
            f"{type(config).__name__}, not a dict); recreate the collection"
        )
    check_stored_config(config, wanted, name)
    return collection


def _foreign_collection(name: str, function: Any) -> str:
    """Why a collection made by something else is refused, and what to do instead."""
    drop = f"client.delete_collection({name!r}) deletes it, if it is not needed"
    if function is None:
        # LangChain's and LlamaIndex's Chroma stores embed outside Chroma and record nothing.
        return (
            f"collection {name!r} records no embedding function (it was made by another tool, "
            "such as LangChain's or LlamaIndex's Chroma store), so its vectors cannot be checked "
            f"against this model: open it with the tool that made it, or give this one another "
            f"collection name ({drop})"
        )
    return (
        f"collection {name!r} was made with the embedding function {function!r}, not "
        f"qwen3-rag's {EF_NAME!r}, so its vectors come from another model: open it with "
        f"{function!r}, or give this one another collection name ({drop})"
    )


def _stored_function(configuration: Any, name: str) -> dict[str, Any]:
    """The collection's stored embedding-function entry, checked to be a dict."""
    configuration = configuration or {}
    if not isinstance(configuration, dict):
        raise ValueError(f"collection {name!r} has a damaged configuration: {configuration!r}")
    stored = configuration.get("embedding_function") or {}
    if not isinstance(stored, dict):
        raise ValueError(f"collection {name!r} has a damaged embedding function entry: {stored!r}")
    return stored


_SCALARS = (str, int, float, bool)


def clean_metadata(metadata: dict[str, Any] | None, *, sep: str = ".") -> dict[str, Any] | None:
    """Make loader metadata storable in Chroma, which takes only flat scalar values.

    Empty metadata becomes None; nested dicts are flattened to ``parent.child`` keys; ``None``
    values are dropped; lists of scalars of one type are kept. Anything Chroma would refuse or
    silently lose is refused here, naming the key: other values (a list of dicts, a date, an
    object), lists mixing types (``[1, "a"]``, ``[1, 2.5]``, ``[True, 1]``), NaN and infinite
    numbers, empty keys, and two keys that flatten to the same name (``{"a.b": 1, "a": {"b":
    2}}``).

    Raises:
        ValueError: Naming the key whose value Chroma cannot store.

    Example:
        >>> clean_metadata({"source": "a.md", "loc": {"page": 2}, "tags": ["x"], "none": None})
        {'source': 'a.md', 'loc.page': 2, 'tags': ['x']}
        >>> clean_metadata({}) is None
        True
        >>> clean_metadata({"a.b": 1, "a": {"b": 2}})
        Traceback (most recent call last):
        ...
        ValueError: metadata keys 'a.b' and 'a' -> 'b' both flatten to 'a.b'; rename one
    """
    if metadata is None:
        return None
    flat: dict[str, Any] = {}
    origin: dict[str, str] = {}  # flattened key -> how the caller spelled it

    def walk(prefix: str, spelled: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, dict):
            for key, inner in value.items():
                name = str(key)
                if not name:
                    where = f"under {spelled}" if spelled else "at the top level"
                    raise ValueError(f"metadata has an empty key {where}; Chroma refuses it")
                walk(
                    f"{prefix}{sep}{name}" if prefix else name,
                    f"{spelled} -> {name!r}" if spelled else repr(name),
                    inner,
                )
            return
        stored: Any
        if isinstance(value, _SCALARS):
            _check_finite(prefix, value)
            stored = value
        elif (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, _SCALARS) for v in value)
        ):
            kinds = sorted({type(v).__name__ for v in value})
            if len(kinds) > 1:
                raise ValueError(
                    f"metadata key {prefix!r} holds a list mixing {', '.join(kinds)}; Chroma "
                    "stores lists of one type only: convert the items to one type"
                )
            for v in value:
                _check_finite(prefix, v)
            stored = list(value)
        else:
            raise ValueError(
                f"metadata key {prefix!r} holds a {type(value).__name__} that Chroma cannot "
                "store; convert it to a string, number, bool or a non-empty list of those"
            )
        if prefix in flat:
            raise ValueError(
                f"metadata keys {origin[prefix]} and {spelled} both flatten to {prefix!r}; "
                "rename one"
            )
        flat[prefix] = stored
        origin[prefix] = spelled

    walk("", "", metadata)
    return flat or None


def _check_finite(key: str, value: Any) -> None:
    # Chroma drops a record's whole metadata on NaN without an error: refuse it here.
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"metadata key {key!r} holds {value!r}; Chroma cannot store NaN or inf")
