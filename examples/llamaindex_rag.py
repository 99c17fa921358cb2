"""LlamaIndex: SimpleDirectoryReader -> ChromaVectorStore -> VectorStoreIndex -> reranked engine.

With OPENAI_API_KEY set and llama-index-llms-openai installed the engine answers; otherwise it
runs retrieval only and prints the reranked sources.

    python examples/llamaindex_rag.py "What are Saturn's rings made of?"
"""

from __future__ import annotations

import os

import chromadb
from llama_index.core import Settings, SimpleDirectoryReader, StorageContext, VectorStoreIndex
from llama_index.vector_stores.chroma import ChromaVectorStore

from qwen3_rag.integrations.llamaindex import Qwen3Embedding, Qwen3Rerank

from _common import parser


def main() -> None:
    args = parser(__doc__ or "", "./demo_db/llamaindex").parse_args()
    answer = bool(os.environ.get("OPENAI_API_KEY"))
    if not answer:
        Settings.llm = None  # retrieval only; no LLM is called
    collection = chromadb.PersistentClient(args.db).get_or_create_collection(
        "llamaindex-demo", metadata={"hnsw:space": "cosine"}
    )
    store = ChromaVectorStore(chroma_collection=collection)
    embed_model = Qwen3Embedding(model=args.embedding_model, device=args.device)
    if collection.count() == 0:
        documents = SimpleDirectoryReader(args.data, required_exts=[".txt", ".md"]).load_data()
        index = VectorStoreIndex.from_documents(
            documents,
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=embed_model,
        )
    else:
        index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
    engine = index.as_query_engine(
        similarity_top_k=args.k,
        node_postprocessors=[
            Qwen3Rerank(model=args.reranker_model, device=args.device, top_n=args.top_n)
        ],
        response_mode="compact" if answer else "no_text",
    )
    response = engine.query(args.question)
    if answer:
        print(response)
    print(f"sources for: {args.question}")
    for node in response.source_nodes:
        name = node.node.metadata.get("file_name", "?")
        print(f"{node.score:.4f}  {name}: {node.node.get_content()[:100]!r}")


if __name__ == "__main__":
    main()
