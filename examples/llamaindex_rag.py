"""LlamaIndex: SimpleDirectoryReader -> IngestionPipeline -> ChromaVectorStore -> reranked engine.

Every run brings the store in line with --data: new and changed files are embedded, files that
are gone (or belong to a previous --data) are removed, unchanged ones cost nothing. With
OPENAI_API_KEY set and llama-index-llms-openai installed the engine answers; otherwise it runs
retrieval only and prints the reranked sources.

    python examples/llamaindex_rag.py "What are Saturn's rings made of?"
"""

from __future__ import annotations

import os
from pathlib import Path

import chromadb
from llama_index.core import Settings, SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.storage.docstore import SimpleDocumentStore
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

    # The pipeline's docstore remembers which file (by path) holds which content, so a re-run
    # embeds only what changed. It lives next to the vectors; an empty collection starts afresh.
    pipeline_dir = Path(args.db) / "llamaindex-pipeline"
    pipeline = IngestionPipeline(
        transformations=[SentenceSplitter(), embed_model],
        vector_store=store,
        docstore=SimpleDocumentStore(),
        docstore_strategy=DocstoreStrategy.UPSERTS_AND_DELETE,
        disable_cache=True,  # the docstore already skips unchanged files
    )
    if collection.count() and pipeline_dir.exists():
        pipeline.load(str(pipeline_dir))
    documents = SimpleDirectoryReader(
        args.data, required_exts=[".txt", ".md"], filename_as_id=True
    ).load_data()
    pipeline.run(documents=documents)
    pipeline.persist(str(pipeline_dir))

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
        text = " ".join(node.node.get_content().split())  # one line: newlines become spaces
        print(f"{node.score:.4f}  {name}: {text[:100]}")


if __name__ == "__main__":
    main()
