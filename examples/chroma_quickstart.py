"""Plain chromadb with Qwen3EmbeddingFunction, then the core reranker.

python examples/chroma_quickstart.py "Why is Venus so hot?"
"""

from __future__ import annotations

import chromadb

from qwen3_rag import Qwen3Reranker
from qwen3_rag.integrations.chroma import Qwen3EmbeddingFunction, open_collection

from _common import paragraphs, parser


def main() -> None:
    args = parser(__doc__ or "", "./demo_db/chroma").parse_args()
    client = chromadb.PersistentClient(args.db)
    ef = Qwen3EmbeddingFunction(args.embedding_model, device=args.device)
    docs = open_collection(client, "quickstart", ef)
    passages = paragraphs(args.data)
    # upsert with stable ids: running the script again adds nothing twice.
    docs.upsert(
        ids=[f"{src}:{i}" for i, (src, _) in enumerate(passages)],
        documents=[text for _, text in passages],
        metadatas=[{"source": src} for src, _ in passages],
    )
    hits = docs.query(query_texts=[args.question], n_results=min(args.k, docs.count()))
    texts, metas = hits["documents"][0], hits["metadatas"][0]
    reranker = Qwen3Reranker(args.reranker_model, device=args.device)
    print(f"query: {args.question}")
    for r in reranker.rerank(args.question, texts, top_n=args.top_n):
        print(f"{r.score:.4f}  {metas[r.index]['source']}: {r.document[:100]}")


if __name__ == "__main__":
    main()
