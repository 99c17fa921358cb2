"""Chroma embedding function: types, persisted config, reopening in a fresh process."""

from __future__ import annotations

import dataclasses
import doctest
import gc
import importlib
import json
import logging
import math
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import chromadb
import numpy as np
import pytest

from qwen3_rag import ModelLoadError, Qwen3Embedder
from qwen3_rag.core import EmbedderConfig
from qwen3_rag.core.spec import CHROMA_FUNCTION_NAME
from qwen3_rag.integrations.chroma import (
    CONFIG_KEYS,
    REBUILT_KEPT,
    ConfigMismatchError,
    Qwen3EmbeddingFunction,
    clean_metadata,
    open_collection,
)

TEXTS = ["Beijing is the capital of China.", "Gravity attracts masses.", "Paris is in France."]


@pytest.fixture(scope="module")
def ef(embed_eos_path):
    return Qwen3EmbeddingFunction(embed_eos_path, max_length=128)


def test_types_and_query_path(ef, embed_eos_path):
    core = Qwen3Embedder(embed_eos_path, max_length=128)
    docs = ef(TEXTS)
    queries = ef.embed_query(["capital?"])
    assert isinstance(docs, list) and all(
        isinstance(v, np.ndarray) and v.dtype == np.float32 for v in docs
    )
    assert isinstance(queries[0], np.ndarray) and queries[0].dtype == np.float32
    np.testing.assert_array_equal(np.stack(docs), core.embed_documents(TEXTS))
    np.testing.assert_array_equal(queries[0], core.embed_queries(["capital?"])[0])
    assert ef.default_space() == "cosine"
    assert Qwen3EmbeddingFunction.name() == "qwen3_rag"


def test_bad_inputs(ef):
    with pytest.raises(TypeError, match="single str"):
        ef("a bare string")
    with pytest.raises(TypeError, match=r"\[1\]"):
        ef(["ok", 3])
    with pytest.raises(ValueError, match="non-empty"):
        ef([])  # Chroma's own wrapper refuses empty embeddings


def test_config_round_trip_and_validation(ef, embed_eos_path):
    config = ef.get_config()
    assert config == {
        "model": embed_eos_path,
        "revision": None,
        "dimensions": 64,
        "instruction": ef.instruction,
        "max_length": 128,
    }
    json.dumps(config)  # persisted as JSON
    rebuilt = Qwen3EmbeddingFunction.build_from_config(config)
    np.testing.assert_array_equal(np.stack(rebuilt(TEXTS)), np.stack(ef(TEXTS)))
    bad_cases = [
        ({**config, "trust_remote_code": True}, "trust_remote_code"),
        ({**config, "dimensions": "64"}, "dimensions"),
        ({**config, "dimensions": True}, "dimensions"),
        ({k: v for k, v in config.items() if k != "model"}, "model"),
        ({**config, "model": ""}, "model"),
        ({**config, "max_length": 1.5}, "max_length"),
    ]
    for bad, key in bad_cases:
        with pytest.raises(ValueError, match=key):
            Qwen3EmbeddingFunction.build_from_config(bad)
    with pytest.raises(ModelLoadError, match="missing-model-dir"):
        Qwen3EmbeddingFunction.build_from_config({**config, "model": "./missing-model-dir"})


def test_config_update_refuses_a_new_model_or_dimension(ef):
    old = ef.get_config()
    with pytest.raises(ConfigMismatchError, match=r"dimensions=64.*dimensions=32"):
        ef.validate_config_update(old, {**old, "dimensions": 32})
    # Another instruction embeds the same queries another way: refused too (one check).
    with pytest.raises(ConfigMismatchError, match=r"instruction="):
        ef.validate_config_update(old, {**old, "instruction": "other"})
    ef.validate_config_update(old, dict(old))


def test_reopen_with_another_dimension_fails_naming_both(tmp_path, ef, embed_eos_path):
    client = chromadb.PersistentClient(str(tmp_path))
    col = open_collection(client, "docs", ef)
    col.add(ids=["a", "b", "c"], documents=TEXTS)
    other = Qwen3EmbeddingFunction(embed_eos_path, max_length=128, dimensions=32)
    with pytest.raises(ConfigMismatchError, match=r"dimensions=64.*dimensions=32"):
        open_collection(client, "docs", other)
    same = ef.get_config()
    again = open_collection(
        client, "docs", Qwen3EmbeddingFunction(embed_eos_path, max_length=same["max_length"])
    )
    assert again.count() == 3


def test_reopen_with_another_instruction_or_max_length_is_refused(tmp_path, ef, embed_eos_path):
    # The collection embeds its queries one way: a second opener with other settings would
    # silently embed them another way, so it is refused naming both values.
    client = chromadb.PersistentClient(str(tmp_path))
    open_collection(
        client, "docs", Qwen3EmbeddingFunction(embed_eos_path, instruction="Task A", max_length=64)
    )
    with pytest.raises(ConfigMismatchError, match=r"instruction='Task A'.*instruction='Task B'"):
        open_collection(
            client,
            "docs",
            Qwen3EmbeddingFunction(embed_eos_path, instruction="Task B", max_length=64),
        )
    with pytest.raises(ConfigMismatchError, match=r"max_length=64.*max_length=128"):
        open_collection(
            client,
            "docs",
            Qwen3EmbeddingFunction(embed_eos_path, instruction="Task A", max_length=128),
        )


_QUERY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import chromadb
    import qwen3_rag.integrations.chroma  # registers the embedding function by name
    client = chromadb.PersistentClient(sys.argv[1])
    col = client.get_collection("docs")
    res = col.query(query_texts=["capital of China"], n_results=3)
    print(json.dumps({"ids": res["ids"], "distances": res["distances"], "count": col.count()}))
    """
)


@pytest.mark.slow
def test_persistent_collection_reopened_in_a_fresh_process(tmp_path, ef):
    client = chromadb.PersistentClient(str(tmp_path))
    col = open_collection(client, "docs", ef)
    col.add(ids=["a", "b", "c"], documents=TEXTS, metadatas=[{"i": i} for i in range(3)])
    here = col.query(query_texts=["capital of China"], n_results=3)
    del col, client
    out = subprocess.run(
        [sys.executable, "-c", _QUERY_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    there = json.loads(out.stdout.strip().splitlines()[-1])
    assert there["count"] == 3
    assert there["ids"] == here["ids"]
    np.testing.assert_allclose(there["distances"], here["distances"], atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [
        ("qwen3_rag.integrations.langchain", "langchain_core", "langchain"),
        ("qwen3_rag.integrations.llamaindex", "llama_index", "llamaindex"),
        ("qwen3_rag.integrations.chroma", "chromadb", "chroma"),
    ],
)
@pytest.mark.slow
def test_missing_framework_gives_the_install_hint(module, framework, extra):
    code = textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == {framework!r} or name.startswith({framework!r} + "."):
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        try:
            import {module}
        except ImportError as e:
            print(e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f'pip install "qwen3-rag[{extra}]"' in out.stdout


@pytest.mark.slow
def test_reopening_without_the_plugin_fails_instead_of_falling_back(tmp_path, ef):
    """reliability.md case 36: never a silent switch to Chroma's default MiniLM function."""
    col = open_collection(chromadb.PersistentClient(str(tmp_path)), "docs", ef)
    col.add(ids=["a"], documents=["alpha"])
    code = textwrap.dedent(
        """
        import sys, chromadb
        col = chromadb.PersistentClient(sys.argv[1]).get_collection("docs")
        try:
            col.query(query_texts=["alpha"], n_results=1)
        except ValueError as e:
            print("refused:", e)
        else:
            print("answered without qwen3_rag")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert "refused:" in out.stdout and "qwen3_rag" in out.stdout


def test_registration_is_unique_and_idempotent():
    """reliability.md case 39: our name is ours alone, and re-registering changes nothing."""
    import importlib

    from chromadb.utils import embedding_functions as chroma_efs

    import qwen3_rag.integrations.chroma as module

    assert chroma_efs.known_embedding_functions["qwen3_rag"] is module.Qwen3EmbeddingFunction
    reloaded = importlib.reload(module)
    assert chroma_efs.known_embedding_functions["qwen3_rag"] is reloaded.Qwen3EmbeddingFunction


# -- the persisted config derives from the core config ---------------------------------------


def test_persisted_keys_are_the_model_revision_and_the_persist_fields():
    persist = [f.name for f in dataclasses.fields(EmbedderConfig) if f.metadata["persist"]]
    assert ("model", "revision", *persist) == CONFIG_KEYS
    assert Qwen3EmbeddingFunction.name() == CHROMA_FUNCTION_NAME


# -- reopened collections keep one loaded model (#17.1) --------------------------------------


def _copy_checkpoint(src: str, dest: Path) -> str:
    """A private copy: its own registry key, so loads of it are counted from zero."""
    shutil.copytree(src, dest)
    return str(dest)


class _CountLoads(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.loads: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("loading embedding"):
            self.loads.append(record.getMessage())


@pytest.fixture
def count_loads():
    handler = _CountLoads()
    logger = logging.getLogger("qwen3_rag.core.runtime")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler.loads
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.mark.slow
def test_collection_opened_without_a_function_loads_the_model_once(
    tmp_path, embed_eos_path, count_loads
):
    model = _copy_checkpoint(embed_eos_path, tmp_path / "emb")
    client = chromadb.PersistentClient(str(tmp_path / "db"))
    ef = Qwen3EmbeddingFunction(model, max_length=64)
    open_collection(client, "docs", ef).add(ids=["a", "b", "c"], documents=TEXTS)
    want = ef.embed_query(["capital of China"])[0]
    del ef
    gc.collect()
    assert len(count_loads) == 1
    # The README's flow: reopen by name; Chroma rebuilds the function on every call.
    col = client.get_collection("docs")
    first = col.query(query_texts=["capital of China"], n_results=3)
    gc.collect()
    loaded = len(count_loads)
    assert loaded <= 2  # at most one load for the rebuilt function
    for _ in range(4):
        again = col.query(query_texts=["capital of China"], n_results=3)
        gc.collect()
        assert again["ids"] == first["ids"]
    assert len(count_loads) == loaded  # none per call
    rebuilt = Qwen3EmbeddingFunction.build_from_config(
        col.configuration_json["embedding_function"]["config"]
    )
    np.testing.assert_array_equal(rebuilt.embed_query(["capital of China"])[0], want)


@pytest.mark.slow
def test_rebuilt_functions_are_kept_and_bounded(tmp_path, embed_eos_path, count_loads):
    model = _copy_checkpoint(embed_eos_path, tmp_path / "emb")
    config = Qwen3EmbeddingFunction(model, max_length=64).get_config()
    gc.collect()
    first = Qwen3EmbeddingFunction.build_from_config(config)
    loaded = len(count_loads)
    del first
    gc.collect()
    again = Qwen3EmbeddingFunction.build_from_config(dict(config))
    assert len(count_loads) == loaded  # kept alive: not loaded again
    first = again
    # Other configs push it out after REBUILT_KEPT more; then it is built again.
    for i in range(REBUILT_KEPT):
        Qwen3EmbeddingFunction.build_from_config({**config, "max_length": 65 + i})
    assert Qwen3EmbeddingFunction.build_from_config(config) is not first
    Qwen3EmbeddingFunction.forget_rebuilt()


# -- any adapter registers the function (#17.2) ----------------------------------------------

_LANGCHAIN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from langchain_chroma import Chroma
    from qwen3_rag.integrations.langchain import Qwen3Embeddings
    store = Chroma(
        collection_name="docs",
        embedding_function=Qwen3Embeddings(model=sys.argv[2], max_length=128),
        persist_directory=sys.argv[1],
    )
    hits = store.similarity_search_with_relevance_scores("capital of China", k=3)
    print(json.dumps(sorted(d.page_content for d, _ in hits)))
    """
)


@pytest.mark.slow
def test_collection_opens_through_langchain_chroma_in_a_fresh_process(tmp_path, ef, embed_eos_path):
    col = open_collection(chromadb.PersistentClient(str(tmp_path)), "docs", ef)
    col.add(ids=["a", "b", "c"], documents=TEXTS)
    out = subprocess.run(
        [sys.executable, "-c", _LANGCHAIN_SCRIPT, str(tmp_path), embed_eos_path],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == sorted(TEXTS)


# -- damaged or out-of-range persisted configs (#17.9) ---------------------------------------


def _tamper_config(db: Path, change) -> None:
    """Edit the stored function config in Chroma's own database, as damage would."""

    def walk(node):
        if isinstance(node, dict):
            if node.get("name") == "qwen3_rag" and "config" in node:
                node["config"] = change(node["config"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    from chromadb.api.client import SharedSystemClient

    with sqlite3.connect(db / "chroma.sqlite3") as con:
        (schema,) = con.execute("select schema_str from collections").fetchone()
        schema = json.loads(schema)
        walk(schema)
        con.execute("update collections set schema_str = ?", (json.dumps(schema),))
    con.close()
    SharedSystemClient.clear_system_cache()  # the next client reads the files afresh


def test_open_collection_on_a_damaged_config_names_it(tmp_path, ef, embed_eos_path):
    open_collection(chromadb.PersistentClient(str(tmp_path)), "docs", ef).add(
        ids=["a"], documents=["alpha"]
    )
    _tamper_config(tmp_path, lambda config: [config])
    client = chromadb.PersistentClient(str(tmp_path))
    with pytest.raises(ValueError, match=r"damaged qwen3_rag config.*list"):
        open_collection(client, "docs", Qwen3EmbeddingFunction(embed_eos_path, max_length=128))


def _broken_weights(src: str, dest: Path) -> str:
    """A checkpoint whose config and tokenizer are fine but whose weights cannot load."""
    shutil.copytree(src, dest)
    for weights in dest.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    return str(dest)


def test_out_of_range_dimensions_refused_before_weights_load(tmp_path, embed_eos_path):
    model = _broken_weights(embed_eos_path, tmp_path / "broken")
    with pytest.raises(ValueError, match=r"dimensions=128 is out of range.*32 to 64"):
        Qwen3EmbeddingFunction(model, dimensions=128)
    config = {**Qwen3EmbeddingFunction(embed_eos_path).get_config(), "model": model}
    with pytest.raises(ValueError, match=r"dimensions=128 is out of range"):
        Qwen3EmbeddingFunction.build_from_config({**config, "dimensions": 128})
    with pytest.raises(ValueError, match=r"dimensions must be at least 32, got 8"):
        Qwen3EmbeddingFunction.build_from_config({**config, "dimensions": 8})


# -- metadata Chroma can store (#17.7) -------------------------------------------------------


def test_clean_metadata_output_is_stored_exactly_by_chroma(tmp_path):
    raw = {
        "source": "a.md",
        "loc": {"page": 2, "lines": {"from": 1, "to": 9}},
        "tags": ["x", "y"],
        "pages": [1, 2],
        "weights": [0.5, 1.5],
        "flags": [True, False],
        "score": 0.25,
        "draft": False,
        "none": None,
    }
    cleaned = clean_metadata(raw)
    assert raw["loc"] == {"page": 2, "lines": {"from": 1, "to": 9}}  # the input is untouched
    col = chromadb.PersistentClient(str(tmp_path)).create_collection(
        "meta", embedding_function=None
    )
    col.upsert(ids=["a"], embeddings=[[0.0, 1.0]], metadatas=[cleaned])
    assert col.get(ids=["a"], include=["metadatas"])["metadatas"][0] == cleaned


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"a.b": 1, "a": {"b": 2}}, r"'a\.b' and 'a' -> 'b' both flatten to 'a\.b'"),
        ({"a": {"b": 2}, "a.b": 1}, r"'a' -> 'b' and 'a\.b' both flatten to 'a\.b'"),
        ({"mixed": [1, "a"]}, r"'mixed' holds a list mixing int, str"),
        ({"mixed": [1, 2.5]}, r"'mixed' holds a list mixing float, int"),
        ({"mixed": [True, 1]}, r"'mixed' holds a list mixing bool, int"),
        ({"x": {"score": math.nan}}, r"'x\.score' holds nan"),
        ({"score": math.inf}, r"'score' holds inf"),
        ({"scores": [1.0, -math.inf]}, r"'scores' holds -inf"),
        ({"": 1}, "empty key at the top level"),
        ({"loc": {"": 1}}, "empty key under 'loc'"),
    ],
)
def test_clean_metadata_refuses_what_chroma_would_refuse_or_lose(metadata, message):
    with pytest.raises(ValueError, match=message):
        clean_metadata(metadata)


# -- docstring examples ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "runnable"),
    [("chroma", 3), ("llamaindex", 1), ("langchain", 0), ("_common", 0)],
)
def test_docstring_examples_of_the_adapters_run(module, runnable):
    mod = importlib.import_module(f"qwen3_rag.integrations.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted >= runnable
