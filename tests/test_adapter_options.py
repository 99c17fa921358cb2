"""What every adapter shares: options derived from the core configs, changes, copies, checks."""

from __future__ import annotations

import copy
import dataclasses
import json
import pathlib
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from qwen3_rag.core import EmbedderConfig, Qwen3Embedder, Qwen3Reranker, RerankerConfig
from qwen3_rag.integrations import langchain as lc
from qwen3_rag.integrations import llamaindex as li
from qwen3_rag.integrations.chroma import Qwen3EmbeddingFunction

EMBEDDING_ADAPTERS = [lc.Qwen3Embeddings, li.Qwen3Embedding]
RERANK_ADAPTERS = [lc.Qwen3Rerank, li.Qwen3Rerank]
ALL_ADAPTERS = EMBEDDING_ADAPTERS + RERANK_ADAPTERS


def _ids(classes):
    return [f"{c.__module__.rsplit('.', 1)[-1]}.{c.__name__}" for c in classes]


def _model_path(cls) -> str:
    from conftest import tiny_checkpoint

    return tiny_checkpoint("embed-eos" if cls in EMBEDDING_ADAPTERS else "reranker")


def _config_class(cls):
    return EmbedderConfig if cls in EMBEDDING_ADAPTERS else RerankerConfig


def _vector(adapter) -> list[float]:
    if isinstance(adapter, lc.Qwen3Embeddings):
        return adapter.embed_query("gravity")
    return adapter.get_query_embedding("gravity")


# A value other than the default for every core option. A new option needs a sample here, and
# no edit in any adapter.
SAMPLES = {
    "device": "cpu",
    "dtype": "float32",
    "max_length": 100,
    "revision": "0123abc",
    "cache_dir": "/tmp/qwen3-rag-cache",
    "local_files_only": True,
    "attn_implementation": "eager",
    "batch_tokens": 512,
    "max_batch_size": 7,
    "max_chars": 1000,
    "show_progress": False,
    "compile": True,
    "dimensions": 48,
    "instruction": "Find code",
    "share_prefix": False,
    "max_query_share": 0.5,
}


@pytest.mark.parametrize("cls", ALL_ADAPTERS, ids=_ids(ALL_ADAPTERS))
def test_every_config_field_is_a_documented_adapter_field(cls):
    for f in dataclasses.fields(_config_class(cls)):
        field = cls.model_fields[f.name]
        assert field.default is None
        assert field.description.startswith(f.metadata["help"])
        # None stands for the config's default: named where it is a value, never "None: None".
        said = "" if f.default is None else f" (None: {f.default!r})"
        assert field.description == f.metadata["help"] + said, f.name
    assert {f.name for f in dataclasses.fields(_config_class(cls))} <= set(SAMPLES)


@pytest.mark.parametrize(
    "cls",
    [*ALL_ADAPTERS, Qwen3EmbeddingFunction],
    ids=_ids([*ALL_ADAPTERS, Qwen3EmbeddingFunction]),
)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.grid
def test_every_config_field_is_forwarded_to_the_core(cls):
    is_embedding = cls in EMBEDDING_ADAPTERS or cls is Qwen3EmbeddingFunction
    config_cls = EmbedderConfig if is_embedding else RerankerConfig
    options = {f.name: SAMPLES[f.name] for f in dataclasses.fields(config_cls)}
    assert all(options[k] != f.default for f in dataclasses.fields(config_cls) for k in [f.name])
    from conftest import tiny_checkpoint

    path = tiny_checkpoint("embed-eos" if is_embedding else "reranker")
    if cls is Qwen3EmbeddingFunction:
        core = cls(path, **options).embedder
    else:
        adapter = cls(model=path, **options)
        core = adapter.embedder if is_embedding else adapter.reranker
    assert core.config == config_cls(**options)


@pytest.mark.parametrize("cls", ALL_ADAPTERS, ids=_ids(ALL_ADAPTERS))
def test_core_types_are_accepted_and_normalised_like_the_core(cls):
    adapter = cls(
        model=pathlib.Path(_model_path(cls)), dtype=torch.float32, device=torch.device("cpu")
    )
    assert adapter.model == _model_path(cls)
    assert (adapter.dtype, adapter.device) == ("float32", "cpu")
    assert adapter.core.config.dtype == "float32"
    with pytest.raises(ValueError, match="dtype='float8' is not supported"):
        cls(model=_model_path(cls), dtype="float8")
    with pytest.raises(ValueError, match="max_length must be an int, got True"):
        cls(model=_model_path(cls), max_length=True)


# -- changes after construction (#17.3) ----------------------------------------------------------


@pytest.mark.parametrize("cls", EMBEDDING_ADAPTERS, ids=_ids(EMBEDDING_ADAPTERS))
def test_changed_fields_take_effect_or_are_refused(cls):
    emb = cls(model=_model_path(cls), max_length=128, dimensions=32)
    emb.dimensions = 48
    assert len(_vector(emb)) == 48 and emb.embedder.config.dimensions == 48
    copied = emb.model_copy(update={"dimensions": 40})
    assert copied.dimensions == 40 and len(_vector(copied)) == 40
    assert len(_vector(emb)) == 48  # the original is unchanged
    with pytest.raises(ValueError, match="dimensions must be at least 32, got 7"):
        emb.dimensions = 7
    with pytest.raises(ValueError, match="dimensions=65 is out of range"):
        emb.dimensions = 65
    assert emb.dimensions == 48 and len(_vector(emb)) == 48  # still the value in effect
    with pytest.raises(ValueError, match="dimensions must be at least 32"):
        emb.model_copy(update={"dimensions": 8})
    # The instruction is used per call: a change is effective on the next call.
    emb.instruction = ""
    core = Qwen3Embedder(_model_path(cls), max_length=128, dimensions=48)
    np.testing.assert_array_equal(
        np.asarray(_vector(emb), dtype=np.float32), core.embed_documents(["gravity"])[0]
    )


@pytest.mark.parametrize("cls", ALL_ADAPTERS, ids=_ids(ALL_ADAPTERS))
def test_options_cannot_be_set_on_a_built_core_object(cls):
    core_cls = Qwen3Embedder if cls in EMBEDDING_ADAPTERS else Qwen3Reranker
    adapter = cls(model=core_cls(_model_path(cls), max_length=128))
    with pytest.raises(ValueError, match=r"already-built .* so max_length cannot apply"):
        adapter.max_length = 64
    assert adapter.max_length is None and adapter.core.max_length == 128


@pytest.mark.parametrize("cls", RERANK_ADAPTERS, ids=_ids(RERANK_ADAPTERS))
def test_rerank_fields_are_checked_like_the_core(cls):
    rr = cls(model=_model_path(cls), max_length=256)
    for field, value, message in [
        ("top_n", 0, "top_n must be a positive int, got 0"),
        ("top_n", True, "top_n must be a positive int, got True"),
        ("score_threshold", 5.0, r"score_threshold must be a number in \[0, 1\]"),
        ("score_threshold", True, r"score_threshold must be a number in \[0, 1\]"),
    ]:
        with pytest.raises(ValueError, match=message):
            cls(model=rr.reranker, **{field: value})
        with pytest.raises(ValueError, match=message):
            setattr(rr, field, value)
        with pytest.raises(ValueError, match=message):
            rr.model_copy(update={field: value})
    assert (rr.top_n, rr.score_threshold) == (3, None)
    rr.share_prefix = False
    assert rr.reranker.share_prefix is False


# -- copies and pickles (#17.8) ------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_ADAPTERS, ids=_ids(ALL_ADAPTERS))
@pytest.mark.parametrize("built", [False, True], ids=["path", "core-object"])
def test_deepcopy_shares_the_model_and_pickle_rebuilds_it(cls, built):
    core_cls = Qwen3Embedder if cls in EMBEDDING_ADAPTERS else Qwen3Reranker
    model = core_cls(_model_path(cls), max_length=128) if built else _model_path(cls)
    adapter = cls(model=model) if built else cls(model=model, max_length=128)
    twin = copy.deepcopy(adapter)
    assert twin.core is adapter.core  # no second copy of the weights
    restored = pickle.loads(pickle.dumps(adapter))
    assert restored.core is not adapter.core
    assert restored.core._loaded is adapter.core._loaded  # same process: shared weights
    assert restored.core.config == adapter.core.config
    assert restored.model_dump() == adapter.model_dump()


_UNPICKLE = textwrap.dedent(
    """
    import json, pickle, sys
    with open(sys.argv[1], "rb") as f:
        emb, rr = pickle.load(f)
    print(json.dumps({"vector": emb.embed_query("gravity"), "scores": [
        d.metadata["relevance_score"] for d in rr.compress_documents(
            [__import__("langchain_core.documents").documents.Document(page_content="a b")], "a")
    ]}))
    """
)


@pytest.mark.slow
def test_pickled_adapters_load_the_model_in_another_process(tmp_path):
    from langchain_core.documents import Document

    emb = lc.Qwen3Embeddings(
        model=Qwen3Embedder(_model_path(lc.Qwen3Embeddings), max_length=128, dimensions=40)
    )
    rr = lc.Qwen3Rerank(model=_model_path(lc.Qwen3Rerank), max_length=256, top_n=None)
    (tmp_path / "adapters.pkl").write_bytes(pickle.dumps((emb, rr)))
    out = subprocess.run(
        [sys.executable, "-c", _UNPICKLE, str(tmp_path / "adapters.pkl")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    there = json.loads(out.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(there["vector"], emb.embed_query("gravity"), atol=1e-6)
    here = rr.compress_documents([Document(page_content="a b")], "a")
    np.testing.assert_allclose(there["scores"], [here[0].metadata["relevance_score"]], atol=1e-6)


# -- serialisation and model names (#17.9, #10.2) -----------------------------------------------


@pytest.mark.parametrize("cls", ALL_ADAPTERS, ids=_ids(ALL_ADAPTERS))
def test_serialised_form_names_the_running_model_and_its_options(cls):
    core_cls = Qwen3Embedder if cls in EMBEDDING_ADAPTERS else Qwen3Reranker
    core = core_cls(_model_path(cls), max_length=100)
    adapter = cls(model=core)
    dumped = json.loads(
        adapter.to_json() if hasattr(adapter, "to_json") else adapter.model_dump_json()
    )
    assert dumped["model"] == core.model_name
    assert dumped["max_length"] == 100 and dumped["instruction"] == core.instruction
    dumped.pop("class_name", None)
    rebuilt = cls(**dumped)
    assert rebuilt.core.config.max_length == 100


@pytest.mark.parametrize("cls", [lc.Qwen3Embeddings, lc.Qwen3Rerank, li.Qwen3Rerank])
def test_model_name_is_refused_with_a_pointer_to_model(cls):
    with pytest.raises(ValueError, match=r"takes the model as model=\.\.\., not model_name"):
        cls(model_name=_model_path(cls))


@pytest.mark.parametrize("cls", EMBEDDING_ADAPTERS, ids=_ids(EMBEDDING_ADAPTERS))
def test_out_of_range_dimensions_refused_before_the_weights_load(cls, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(_model_path(cls), broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"dimensions=128 is out of range.*32 to 64"):
        cls(model=str(broken), dimensions=128)
