"""``qwen3-rag serve``.

The models behind the OpenAI, Cohere and TEI APIs, batched across requests.
"""
