"""LangChain: Chroma store + Qwen3Embeddings, reranking retriever, and an LCEL answer chain.

Set OPENAI_API_KEY (and optionally OPENAI_BASE_URL, OPENAI_MODEL) with langchain-openai installed
to get an answer from any OpenAI-compatible chat endpoint; without one, the script prints the
retrieved, reranked context that would be sent.

    python examples/langchain_rag.py "How often should keys be rotated?"
"""

from __future__ import annotations

import os

from langchain_chroma import Chroma
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from qwen3_rag.integrations.langchain import Qwen3Embeddings, Qwen3Rerank

from _common import paragraphs, parser

PROMPT = ChatPromptTemplate.from_messages(
    [
        ("system", "Answer from the context only. Cite sources in brackets.\n\n{context}"),
        ("human", "{question}"),
    ]
)


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(
        f"[{d.metadata['source']} | score {d.metadata['relevance_score']:.3f}]\n{d.page_content}"
        for d in docs
    )


def chat_model():  # -> BaseChatModel | None
    if not os.environ.get("OPENAI_API_KEY"):
        return None
    from langchain_openai import ChatOpenAI  # pip install langchain-openai

    return ChatOpenAI(model=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))


def main() -> None:
    args = parser(__doc__ or "", "./demo_db/langchain").parse_args()
    embeddings = Qwen3Embeddings(model=args.embedding_model, device=args.device)
    store = Chroma(
        collection_name="langchain-demo",
        embedding_function=embeddings,
        persist_directory=args.db,
        collection_metadata={"hnsw:space": "cosine"},
    )
    passages = paragraphs(args.data)
    store.add_documents(
        [Document(page_content=t, metadata={"source": s}) for s, t in passages],
        ids=[f"{s}:{i}" for i, (s, _) in enumerate(passages)],
    )
    retriever = ContextualCompressionRetriever(
        base_compressor=Qwen3Rerank(
            model=args.reranker_model, device=args.device, top_n=args.top_n
        ),
        base_retriever=store.as_retriever(search_kwargs={"k": args.k}),
    )
    context = retriever | RunnableLambda(format_docs)
    llm = chat_model()
    if llm is None:
        print("No chat model configured (set OPENAI_API_KEY); reranked context:\n")
        print(context.invoke(args.question))
        return
    chain = (
        {"context": context, "question": RunnablePassthrough()} | PROMPT | llm | StrOutputParser()
    )
    print(chain.invoke(args.question))


if __name__ == "__main__":
    main()
