"""LangChain adapters: the framework's own standard suites plus real retrieval pipelines."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from langchain_core.documents import Document
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from qwen3_rag import Qwen3Embedder, Qwen3Reranker
from qwen3_rag.integrations.langchain import INSTRUCTION_METADATA_KEY, Qwen3Embeddings, Qwen3Rerank

from conftest import tiny_checkpoint

DOCS = [
    Document(page_content="Beijing is the capital of China.", metadata={"source": "a.txt", "n": 1}),
    Document(
        page_content="Gravity attracts masses.\nNewton described it.", metadata={"source": "b.txt"}
    ),
    Document(page_content="Python is a programming language.", metadata={"source": "c.txt"}),
    Document(page_content="Paris is the capital of France.", metadata={"source": "d.txt"}),
]


class TestQwen3EmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[Qwen3Embeddings]:
        return Qwen3Embeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": tiny_checkpoint("embed-eos"), "max_length": 128}


class TestQwen3EmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[Qwen3Embeddings]:
        return Qwen3Embeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": tiny_checkpoint("embed-eos"), "max_length": 128}


@pytest.fixture(scope="module")
def embeddings(embed_eos_path):
    return Qwen3Embeddings(model=embed_eos_path, max_length=128)


@pytest.fixture(scope="module")
def rerank(reranker_path):
    return Qwen3Rerank(model=reranker_path, max_length=256, top_n=3)


def test_vectors_equal_the_core_and_are_python_floats(embeddings, embed_eos_path):
    core = Qwen3Embedder(embed_eos_path, max_length=128)
    texts = [d.page_content for d in DOCS]
    docs = embeddings.embed_documents(texts)
    query = embeddings.embed_query("capital of China\nplease")
    assert all(type(v) is float for row in docs for v in row) and type(query[0]) is float
    np.testing.assert_array_equal(np.asarray(docs, dtype=np.float32), core.embed_documents(texts))
    np.testing.assert_array_equal(
        np.asarray(query, dtype=np.float32), core.embed_queries(["capital of China\nplease"])[0]
    )


def test_query_gets_the_instruction_documents_do_not(embeddings, embed_eos_path):
    core = Qwen3Embedder(embed_eos_path, max_length=128)
    q = np.asarray(embeddings.embed_query("gravity"), dtype=np.float32)
    np.testing.assert_array_equal(q, core.embed_queries(["gravity"])[0])
    assert not np.allclose(q, core.embed_documents(["gravity"])[0], atol=1e-3)
    custom = Qwen3Embeddings(model=embed_eos_path, max_length=128, instruction="Find code")
    np.testing.assert_array_equal(
        np.asarray(custom.embed_query("gravity"), dtype=np.float32),
        core.embed_queries(["gravity"], instruction="Find code")[0],
    )


def test_async_equals_sync_and_runs_concurrently(embeddings):
    async def main():
        return await asyncio.gather(
            embeddings.aembed_documents(["a", "b"]),
            embeddings.aembed_query("q"),
            *[embeddings.aembed_query(f"q{i}") for i in range(8)],
        )

    docs, query, *many = asyncio.run(main())
    assert docs == embeddings.embed_documents(["a", "b"])
    assert query == embeddings.embed_query("q")
    assert many[3] == embeddings.embed_query("q3")


def test_adapters_share_the_loaded_model(embed_eos_path, embeddings):
    other = Qwen3Embeddings(model=embed_eos_path, dimensions=32)
    assert other.embedder._loaded is embeddings.embedder._loaded
    assert len(other.embed_query("x")) == 32


def test_built_core_object_is_used_and_conflicting_options_refused(embed_eos_path):
    core = Qwen3Embedder(embed_eos_path, max_length=64)
    assert Qwen3Embeddings(model=core).embedder is core
    with pytest.raises(ValueError, match="dimensions"):
        Qwen3Embeddings(model=core, dimensions=32)
    with pytest.raises(ValueError, match="not_an_option"):
        Qwen3Embeddings(model=embed_eos_path, not_an_option=1)


# -- reranker ------------------------------------------------------------------------------


def test_compressor_returns_scored_copies_best_first(rerank, reranker_path):
    originals = [d.model_copy(deep=True) for d in DOCS]
    out = rerank.compress_documents(DOCS, "What is the capital of China?")
    core = Qwen3Reranker(reranker_path, max_length=256)
    scores = core.score("What is the capital of China?", [d.page_content for d in DOCS])
    assert len(out) == 3
    got = [d.metadata["relevance_score"] for d in out]
    assert got == sorted(scores, reverse=True)[:3]
    for d in out:
        src = next(o for o in DOCS if o.page_content == d.page_content)
        assert d is not src and d.metadata is not src.metadata
        assert {k: v for k, v in d.metadata.items() if k != "relevance_score"} == src.metadata
    assert originals == DOCS  # inputs untouched
    assert rerank.compress_documents([], "q") == []


def test_threshold_and_top_n(reranker_path):
    all_docs = Qwen3Rerank(model=reranker_path, max_length=256, top_n=None)
    scores = [d.metadata["relevance_score"] for d in all_docs.compress_documents(DOCS, "q")]
    assert len(scores) == len(DOCS)
    cut = sorted(scores)[1]
    kept = Qwen3Rerank(model=reranker_path, max_length=256, top_n=None, score_threshold=cut)
    assert len(kept.compress_documents(DOCS, "q")) == len(DOCS) - 1
    with pytest.raises(ValueError, match="top_n must be a positive int, got 0"):
        Qwen3Rerank(model=reranker_path, top_n=0)


def test_instruction_per_instance_per_call_and_via_config(reranker_path):
    core = Qwen3Reranker(reranker_path, max_length=256)
    texts = [d.page_content for d in DOCS]
    want = sorted(core.score("q", texts, instruction="Find code"), reverse=True)
    per_call = Qwen3Rerank(model=reranker_path, max_length=256, top_n=None)
    got = per_call.compress_documents(DOCS, "q", instruction="Find code")
    assert [d.metadata["relevance_score"] for d in got] == want
    per_instance = Qwen3Rerank(
        model=reranker_path, max_length=256, top_n=None, instruction="Find code"
    )
    assert [
        d.metadata["relevance_score"] for d in per_instance.compress_documents(DOCS, "q")
    ] == want

    from langchain_core.callbacks import CallbackManager

    manager = CallbackManager(
        handlers=[], inheritable_metadata={INSTRUCTION_METADATA_KEY: "Find code"}
    )
    via_config = per_call.compress_documents(DOCS, "q", callbacks=manager)
    assert [d.metadata["relevance_score"] for d in via_config] == want


def test_async_compress_equals_sync(rerank):
    sync = rerank.compress_documents(DOCS, "capital")
    got = asyncio.run(rerank.acompress_documents(DOCS, "capital"))
    assert got == sync


@pytest.mark.slow
def test_chroma_store_retriever_and_compression_pipeline(embeddings, rerank, tmp_path):
    from langchain_chroma import Chroma
    from langchain_classic.retrievers import ContextualCompressionRetriever

    store = Chroma(
        collection_name="langchain-docs",
        embedding_function=embeddings,
        persist_directory=str(tmp_path),
        collection_metadata={"hnsw:space": "cosine"},
    )
    store.add_documents(DOCS, ids=[f"d{i}" for i in range(len(DOCS))])
    retriever = ContextualCompressionRetriever(
        base_compressor=rerank, base_retriever=store.as_retriever(search_kwargs={"k": 4})
    )
    query = "What is the capital of China?"
    got = retriever.invoke(query)
    want = rerank.compress_documents(store.similarity_search(query, k=4), query)
    assert [d.page_content for d in got] == [d.page_content for d in want]
    assert [d.metadata["relevance_score"] for d in got] == [
        d.metadata["relevance_score"] for d in want
    ]
    # The per-run instruction reaches the reranker through the config's metadata.
    custom = retriever.invoke(query, config={"metadata": {INSTRUCTION_METADATA_KEY: "Find code"}})
    expected = rerank.compress_documents(
        store.similarity_search(query, k=4), query, instruction="Find code"
    )
    assert [d.metadata["relevance_score"] for d in custom] == [
        d.metadata["relevance_score"] for d in expected
    ]
    # The store searched with the query path (instruction) of the same embeddings.
    hits = store.similarity_search_by_vector(embeddings.embed_query(query), k=1)
    assert hits[0].page_content == store.similarity_search(query, k=1)[0].page_content


def test_lcel_runnable(rerank):
    from langchain_core.runnables import RunnableLambda

    chain = RunnableLambda(lambda q: {"query": q, "documents": DOCS}) | rerank.as_runnable()
    out = chain.invoke("capital")
    assert out == list(rerank.compress_documents(DOCS, "capital"))
    assert asyncio.run(chain.ainvoke("capital")) == out


def test_lcel_runnable_takes_the_instruction_from_input_or_run_metadata(rerank):
    from langchain_core.runnables import RunnableLambda

    want = rerank.compress_documents(DOCS, "capital", instruction="Find code")
    plain = rerank.compress_documents(DOCS, "capital")
    assert [d.metadata["relevance_score"] for d in want] != [
        d.metadata["relevance_score"] for d in plain
    ]
    step = rerank.as_runnable()
    by_input = step.invoke({"query": "capital", "documents": DOCS, "instruction": "Find code"})
    assert by_input == list(want)
    chain = RunnableLambda(lambda q: {"query": q, "documents": DOCS}) | step
    config = {"metadata": {INSTRUCTION_METADATA_KEY: "Find code"}}
    assert chain.invoke("capital", config=config) == list(want)
    assert asyncio.run(chain.ainvoke("capital", config=config)) == list(want)
    # The input key wins over the run metadata; "" means no instruction.
    empty = step.invoke({"query": "capital", "documents": DOCS, "instruction": ""}, config=config)
    assert empty == list(rerank.compress_documents(DOCS, "capital", instruction=""))
    with pytest.raises(ValueError, match=r"missing \['documents'\], unknown \['docs'\]"):
        step.invoke({"query": "capital", "docs": DOCS})
