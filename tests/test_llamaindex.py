"""LlamaIndex adapters in a real VectorStoreIndex on Chroma, with rerank instrumentation."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from qwen3_rag import Qwen3Embedder, Qwen3Reranker
from qwen3_rag.integrations.llamaindex import Qwen3Embedding, Qwen3QueryBundle, Qwen3Rerank

TEXTS = [
    "Beijing is the capital of China.",
    "Gravity attracts masses.",
    "Python is a programming language.",
    "Paris is the capital of France.",
    "The Great Wall is in China.",
]


@pytest.fixture(scope="module")
def embed_model(embed_eos_path):
    return Qwen3Embedding(model=embed_eos_path, max_length=128)


@pytest.fixture(scope="module")
def rerank(reranker_path):
    return Qwen3Rerank(model=reranker_path, max_length=256, top_n=3)


def _nodes() -> list[NodeWithScore]:
    return [
        NodeWithScore(
            node=TextNode(text=t, id_=f"n{i}", metadata={"source": f"{i}.txt"}), score=1.0 - i / 10
        )
        for i, t in enumerate(TEXTS)
    ]


def test_embeddings_equal_the_core(embed_model, embed_eos_path):
    core = Qwen3Embedder(embed_eos_path, max_length=128)
    q = embed_model.get_query_embedding("capital of China")
    docs = embed_model.get_text_embedding_batch(TEXTS)
    assert isinstance(q, list) and type(q[0]) is float
    np.testing.assert_array_equal(
        np.asarray(q, dtype=np.float32), core.embed_queries(["capital of China"])[0]
    )
    np.testing.assert_array_equal(np.asarray(docs, dtype=np.float32), core.embed_documents(TEXTS))
    assert embed_model.get_text_embedding_batch([]) == []


def test_async_embedding_paths_equal_sync(embed_model):
    async def main():
        return await asyncio.gather(
            embed_model.aget_query_embedding("q"),
            embed_model.aget_text_embedding("t"),
            embed_model.aget_text_embedding_batch(TEXTS),
        )

    q, t, batch = asyncio.run(main())
    assert q == embed_model.get_query_embedding("q")
    assert t == embed_model.get_text_embedding("t")
    assert batch == embed_model.get_text_embedding_batch(TEXTS)


def test_rerank_scores_order_and_keeps_retrieval_score(rerank, reranker_path):
    nodes = _nodes()
    before = [(n.score, dict(n.node.metadata)) for n in nodes]
    out = rerank.postprocess_nodes(nodes, query_str="capital of China")
    core = Qwen3Reranker(reranker_path, max_length=256)
    texts = [n.node.get_content(metadata_mode="embed") for n in nodes]
    scores = core.score("capital of China", texts)
    assert [n.score for n in out] == sorted(scores, reverse=True)[:3]
    for n in out:
        original = next(o for o in nodes if o.node.node_id == n.node.node_id)
        assert n.node.metadata["retrieval_score"] == original.score
        assert "retrieval_score" not in n.node.get_content(metadata_mode="llm")
    assert [(n.score, dict(n.node.metadata)) for n in nodes] == before  # inputs untouched


def test_rerank_edge_cases(rerank):
    assert rerank.postprocess_nodes([], query_str="q") == []
    with pytest.raises(ValueError, match="query"):
        rerank.postprocess_nodes(_nodes())


def test_instruction_via_query_bundle(rerank, reranker_path):
    core = Qwen3Reranker(reranker_path, max_length=256)
    nodes = _nodes()
    texts = [n.node.get_content(metadata_mode="embed") for n in nodes]
    want = sorted(core.score("q", texts, instruction="Find code"), reverse=True)[:3]
    out = rerank.postprocess_nodes(nodes, Qwen3QueryBundle("q", instruction="Find code"))
    assert [n.score for n in out] == want
    plain = rerank.postprocess_nodes(nodes, QueryBundle("q"))
    assert [n.score for n in plain] != want


def test_async_rerank_equals_sync(rerank):
    nodes = _nodes()
    got = asyncio.run(rerank.apostprocess_nodes(nodes, query_str="capital"))
    want = rerank.postprocess_nodes(nodes, query_str="capital")
    assert [(n.node.node_id, n.score) for n in got] == [(n.node.node_id, n.score) for n in want]


def test_rerank_emits_instrumentation_events(rerank):
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.event_handlers import BaseEventHandler

    seen: list[str] = []

    class Collect(BaseEventHandler):
        @classmethod
        def class_name(cls) -> str:
            return "Collect"

        def handle(self, event, **kwargs) -> None:
            seen.append(type(event).__name__)

    root = get_dispatcher()
    handler = Collect()
    root.add_event_handler(handler)
    try:
        rerank.postprocess_nodes(_nodes(), query_str="q")
    finally:
        root.event_handlers.remove(handler)
    assert "ReRankStartEvent" in seen and "ReRankEndEvent" in seen


def test_vector_store_index_on_chroma_with_rerank(embed_model, rerank, tmp_path):
    import chromadb
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.vector_stores.chroma import ChromaVectorStore

    client = chromadb.PersistentClient(str(tmp_path))
    collection = client.get_or_create_collection("llama-docs", metadata={"hnsw:space": "cosine"})
    store = ChromaVectorStore(chroma_collection=collection)
    index = VectorStoreIndex.from_documents(
        [Document(text=t, metadata={"source": f"{i}.txt"}) for i, t in enumerate(TEXTS)],
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=embed_model,
    )
    retriever = index.as_retriever(similarity_top_k=5)
    query = "What is the capital of China?"
    retrieved = retriever.retrieve(query)
    assert len(retrieved) == 5
    # The retriever searched with the query path: its top hit is the nearest to embed_query.
    qv = np.asarray(embed_model.get_query_embedding(query))
    docs = np.asarray(
        embed_model.get_text_embedding_batch(
            [n.node.get_content(metadata_mode="embed") for n in retrieved]
        )
    )
    assert int(np.argmax(docs @ qv)) == 0
    reranked = rerank.postprocess_nodes(retrieved, query_str=query)
    assert len(reranked) == 3
    assert [n.score for n in reranked] == sorted((n.score for n in reranked), reverse=True)
    assert all("retrieval_score" in n.node.metadata for n in reranked)


# -- model_name is the model (#10.2) ---------------------------------------------------------


def test_model_name_names_the_model_that_runs(embed_plain_path, embed_eos_path):
    by_name = Qwen3Embedding(model_name=embed_plain_path)
    assert by_name.model == by_name.model_name == embed_plain_path
    np.testing.assert_array_equal(
        np.asarray(by_name.get_text_embedding("x"), dtype=np.float32),
        Qwen3Embedder(embed_plain_path).embed_documents(["x"])[0],
    )
    core = Qwen3Embedder(embed_eos_path, dimensions=32)
    with pytest.raises(ValueError, match="name different models"):
        Qwen3Embedding(model=core, model_name="Qwen/Qwen3-Embedding-8B")
    with pytest.raises(ValueError, match="name different models"):
        Qwen3Embedding(model=embed_eos_path, model_name=embed_plain_path)
    assert Qwen3Embedding(model=core).model_name == embed_eos_path
    assert Qwen3Embedding(model=core, model_name=embed_eos_path).embedder is core
    by_name.model_name = embed_eos_path  # switches the model, like model= does
    assert by_name.embedder.model_name == by_name.model == embed_eos_path
    by_name.model = core
    assert by_name.model_name == embed_eos_path and len(by_name.get_query_embedding("q")) == 32


# -- instructions ---------------------------------------------------------------------------


def test_empty_query_bundle_instruction_means_none(rerank, reranker_path):
    core = Qwen3Reranker(reranker_path, max_length=256)
    nodes = _nodes()
    texts = [n.node.get_content(metadata_mode="embed") for n in nodes]
    want = sorted(core.score("q", texts, instruction=""), reverse=True)[:3]
    out = rerank.postprocess_nodes(nodes, Qwen3QueryBundle("q", instruction=""))
    assert [n.score for n in out] == want
    assert want != sorted(core.score("q", texts), reverse=True)[:3]


# -- caches (#17.4, #17.10) -----------------------------------------------------------------


def test_ingestion_cache_keeps_configurations_apart(embed_eos_path):
    from llama_index.core import Document
    from llama_index.core.ingestion import IngestionCache, IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter

    cache = IngestionCache()
    docs = [Document(text=t, id_=f"d{i}") for i, t in enumerate(TEXTS)]
    lengths = []
    for dims in (32, 48):
        embed = Qwen3Embedding(model=Qwen3Embedder(embed_eos_path, dimensions=dims))
        pipeline = IngestionPipeline(transformations=[SentenceSplitter(), embed], cache=cache)
        lengths.append({len(n.embedding) for n in pipeline.run(documents=docs)})
    assert lengths == [{32}, {48}]
    first = Qwen3Embedding(model=Qwen3Embedder(embed_eos_path, dimensions=32)).to_dict()
    second = Qwen3Embedding(model=embed_eos_path, dimensions=32).to_dict()
    assert first == second  # the same output: the same key, however the model was given


def test_embeddings_cache_keeps_queries_and_documents_apart(embed_eos_path):
    from llama_index.core.storage.kvstore import SimpleKVStore

    core = Qwen3Embedder(embed_eos_path, max_length=128)
    embed = Qwen3Embedding(model=core, embeddings_cache=SimpleKVStore())
    text = TEXTS[0]
    doc = embed.get_text_embedding_batch([text])[0]
    query = embed.get_query_embedding(text)
    np.testing.assert_array_equal(
        np.asarray(doc, dtype=np.float32), core.embed_documents([text])[0]
    )
    np.testing.assert_array_equal(
        np.asarray(query, dtype=np.float32), core.embed_queries([text])[0]
    )
    assert asyncio.run(embed.aget_query_embedding(text)) == query
    assert embed.get_text_embedding(text) == doc  # and the document is not overwritten


# -- legacy callbacks (#17.6) ---------------------------------------------------------------


def test_query_engine_sees_the_legacy_reranking_event(embed_model, reranker_path):
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine

    debug = LlamaDebugHandler(print_trace_on_end=False)
    callbacks = CallbackManager([debug])
    rerank = Qwen3Rerank(model=reranker_path, max_length=256, top_n=3)
    index = VectorStoreIndex.from_documents(
        [Document(text=t) for t in TEXTS], embed_model=embed_model, callback_manager=callbacks
    )
    engine = RetrieverQueryEngine.from_args(
        index.as_retriever(similarity_top_k=5),
        llm=MockLLM(),
        node_postprocessors=[rerank],
        callback_manager=callbacks,
    )
    response = engine.query("capital of China")
    pairs = debug.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1
    start, end = pairs[0]
    assert start.payload["query_str"] == "capital of China"
    assert len(start.payload["nodes"]) == 5
    assert [n.score for n in end.payload["nodes"]] == [n.score for n in response.source_nodes]
