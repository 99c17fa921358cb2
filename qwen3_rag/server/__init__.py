"""``qwen3-rag serve``.

The models behind the OpenAI, Cohere and TEI APIs, batched across requests.
"""

from .app import Models, ServerOptions, create_app

__all__ = ["Models", "ServerOptions", "create_app"]
