"""Chroma embedding function: types, persisted config, reopening in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import chromadb
import numpy as np
import pytest

from qwen3_rag import ModelLoadError, Qwen3Embedder
from qwen3_rag.integrations.chroma import (
    ConfigMismatchError,
    Qwen3EmbeddingFunction,
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
    with pytest.raises(TypeError):
        ef("a bare string")
    with pytest.raises(TypeError, match=r"\[1\]"):
        ef(["ok", 3])
    with pytest.raises(ValueError):
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
    ef.validate_config_update(old, {**old, "instruction": "other"})


def test_reopen_with_another_dimension_fails_naming_both(tmp_path, ef, embed_eos_path):
    client = chromadb.PersistentClient(str(tmp_path))
    col = open_collection(client, "docs", ef)
    col.add(ids=["a", "b", "c"], documents=TEXTS)
    other = Qwen3EmbeddingFunction(embed_eos_path, max_length=128, dimensions=32)
    with pytest.raises(ConfigMismatchError, match=r"dimensions=64.*dimensions=32"):
        open_collection(client, "docs", other)
    again = open_collection(client, "docs", Qwen3EmbeddingFunction(embed_eos_path, max_length=128))
    assert again.count() == 3


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
    others = {
        name
        for name, cls in chroma_efs.known_embedding_functions.items()
        if cls is not module.Qwen3EmbeddingFunction
    }
    assert "qwen3_rag" not in others
    reloaded = importlib.reload(module)
    assert chroma_efs.known_embedding_functions["qwen3_rag"] is reloaded.Qwen3EmbeddingFunction
