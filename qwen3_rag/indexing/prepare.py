"""What both indexing engines do before embedding: open the store and match its settings.

Opening the store for a run (moving a damaged database aside on a rebuild), the embedder's
settings from the collection's stored ones, the ids already stored, and which stored settings
a run changed. :mod:`.indexer` (``index``) and both engines use it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from qwen3_rag.core import EmbedderConfig

from .errors import StoreDamagedError
from .options import IndexOptions, model_reference
from .store import (
    STORED_SETTINGS,
    Store,
    embedder_settings,
    existing_ids,
    move_aside,
    open_store,
)

logger = logging.getLogger("qwen3_rag.indexing")


@dataclass
class Prepared:
    """The store side of an index run, settled before any file is read.

    Attributes:
        model: The model to embed with (a folder as its absolute path).
        embedder: Its :class:`~qwen3_rag.core.EmbedderConfig` options.
        existing: Chunk ids already stored, by source.
        previous: The settings of the collection a rebuild deleted (None without a rebuild).
    """

    model: str
    embedder: dict[str, Any]
    existing: dict[str, set[str]]
    previous: dict[str, Any] | None


def open_for_index(options: IndexOptions, rebuild_hint: str | None = None) -> Store:
    """The store an index run writes; with ``rebuild``, a damaged folder is moved aside first."""
    try:
        return open_store(options.store, write=True, rebuild_hint=rebuild_hint)
    except StoreDamagedError:
        path = options.store.path
        if not (options.rebuild and path is not None):
            raise
        aside = move_aside(path)
        logger.warning("moved the damaged database files to %s", aside)
        return open_store(options.store, write=True, rebuild_hint=rebuild_hint)


def prepare(store: Store, options: IndexOptions) -> Prepared:
    """Match the run's settings to the collection's; with ``rebuild``, delete it first.

    A rebuild keeps every stored setting the run does not give again (the model, its size,
    ``max_length``, the instruction...) and records the ones it changes.

    Raises:
        ConfigMismatchError: If a given setting differs from the stored one (no rebuild).
    """
    name = options.store.collection
    stored = store.stored_config()
    if options.rebuild and stored is not None:
        store.client.delete_collection(name)
        model, embedder = rebuilt_settings(stored, options.embedding_model, options.embedder)
        return Prepared(model, embedder, {}, stored)
    model, embedder = embedder_settings(name, stored, options.embedding_model, options.embedder)
    existing = existing_ids(store.collection()) if stored is not None else {}
    return Prepared(model, embedder, existing, None)


def changed_settings(
    previous: Mapping[str, Any] | None,
    model: str,
    embedder: Mapping[str, Any],
    hidden: int,
    instruction: str,
) -> dict[str, list[Any]]:
    """The stored settings a rebuild changed, ``{name: [before, after]}``.

    Args:
        previous: The deleted collection's settings (None: nothing was rebuilt).
        model: The new model.
        embedder: Its options.
        hidden: Its hidden size (the output size when ``dimensions`` is not given).
        instruction: Its query instruction in effect (the model's own when none is given).
    """
    if previous is None:
        return {}
    config = EmbedderConfig(**embedder)
    now = {"model": model, **{k: getattr(config, k) for k in STORED_SETTINGS}}
    now["dimensions"] = config.dimensions or hidden
    now["instruction"] = instruction
    before = {**previous, "model": model_reference(str(previous.get("model")))}
    return {k: [before[k], now[k]] for k in now if k in before and before[k] != now[k]}


def rebuilt_settings(
    stored: Mapping[str, Any], model: str | None, given: Mapping[str, Any]
) -> tuple[str, dict[str, Any]]:
    """A rebuild's model and options: the given ones, the stored ones for the rest.

    With another model, its own ``revision`` and full size apply unless given: only the
    task settings (``max_length``, ``instruction``) carry over.
    """
    old = model_reference(str(stored["model"]))
    new = model_reference(model) if model else old
    keep = STORED_SETTINGS if new == old else MODEL_FREE_SETTINGS
    options = {k: stored[k] for k in keep if stored.get(k) is not None}
    options.update(given)
    return new, options


#: Stored settings that do not depend on the model: a rebuild with another model keeps them.
MODEL_FREE_SETTINGS = ("max_length", "instruction")
