"""``qwen3-rag serve``: the models on the OpenAI, Cohere and TEI APIs, with a search page."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from typing import Any

from qwen3_rag.cli.common import (
    EXIT_OK,
    SHARED_OPTIONS,
    CliError,
    add_config_flags,
    add_store_flags,
    check_options,
    given_options,
    model_hint,
    model_reference,
    out,
    rebuild_hint,
    require,
    store_options,
)
from qwen3_rag.core import EmbedderConfig, RerankerConfig

SERVER_INSTALL = 'pip install "qwen3-rag[server]"'
API_KEY_VARIABLE = "QWEN3_RAG_API_KEY"
RERANKER_PREFIX = "reranker_"


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the models (in the background: /health says 503 until then) and serve."""
    try:
        import uvicorn

        from qwen3_rag.server import Models, ServerOptions, create_app
        from qwen3_rag.server.http import head_timeout_protocol
    except ImportError as e:
        raise CliError(f"{e.name} is not installed; the server needs: {SERVER_INSTALL}") from e
    store = args.db is not None or args.chroma_url is not None
    if args.embedding_model is None and args.reranker_model is None and not store:
        raise CliError(
            "give --embedding-model, --reranker-model or both (or --db/--chroma-url, whose "
            "collection names its embedding model)"
        )
    if store and args.reranker_model is None:
        raise CliError("the search page and /v1/search rerank: give --reranker-model too")
    for name in ("port", "max_inputs", "max_request_tokens", "max_queue", "max_batch_requests"):
        if getattr(args, name) < (0 if name == "port" else 1):
            raise CliError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
            )
    if args.max_body_mb <= 0 or args.timeout <= 0 or args.read_timeout <= 0:
        raise CliError("--max-body-mb, --timeout and --read-timeout must be positive")
    for origin in args.cors_origin:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise CliError(
                f"--cors-origin {origin!r} is not an origin: give scheme and host, such as "
                "https://app.example.com (or '*' for any)"
            )
    for flag in ("served_model_name", "reranker_served_model_name"):
        name = getattr(args, flag)
        if name is not None and not name.strip():
            raise CliError(f"--{flag.replace('_', '-')} is empty")
    embed_options = given_options(args, EmbedderConfig)
    check_options(EmbedderConfig, embed_options)
    rerank_options = {
        **{k: v for k, v in embed_options.items() if k in SHARED_OPTIONS},
        **given_options(args, RerankerConfig, RERANKER_PREFIX),
    }
    check_options(RerankerConfig, rerank_options)
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_VARIABLE)
    if api_key is not None and not api_key.strip():
        raise CliError(f"the API key (--api-key or {API_KEY_VARIABLE}) is empty")
    # Chroma is opened now, so a wrong folder or URL fails before any model loads.
    collection_args = _open_store(args, embed_options) if store else None

    # Closed when serving ends, however it ends: the read lock is released in this process.
    try:

        def load() -> Any:
            from qwen3_rag.core import Qwen3Embedder, Qwen3Reranker

            embedder = reranker = collection = None
            if collection_args is not None:
                opened, (model, options) = collection_args
                with model_hint("--embedding-model", "EMBED_MODEL"):
                    embedder = Qwen3Embedder(model, show_progress=False, **options)
                collection = opened.collection()
            elif args.embedding_model is not None:
                with model_hint("--embedding-model", "EMBED_MODEL"):
                    embedder = Qwen3Embedder(
                        model_reference(args.embedding_model), show_progress=False, **embed_options
                    )
            if args.reranker_model is not None:
                with model_hint("--reranker-model", "RERANK_MODEL"):
                    reranker = Qwen3Reranker(
                        model_reference(args.reranker_model), show_progress=False, **rerank_options
                    )
            out(f"models loaded; serving on http://{args.host}:{args.port}")
            return Models(
                embedder=embedder,
                reranker=reranker,
                collection=collection,
                collection_name=args.collection if collection is not None else None,
            )

        options = ServerOptions(
            api_key=api_key,
            max_body_bytes=int(args.max_body_mb * 2**20),
            max_inputs=args.max_inputs,
            max_request_tokens=args.max_request_tokens,
            timeout=args.timeout,
            max_queue=args.max_queue,
            max_batch_requests=args.max_batch_requests,
            read_timeout=args.read_timeout,
            cors_origins=tuple(args.cors_origin),
            served_model_name=args.served_model_name,
            reranker_served_model_name=args.reranker_served_model_name,
            rerank_documents=args.rerank_documents,
        )
        failed: list[BaseException] = []
        server: Any = None

        def on_load_error(error: BaseException) -> None:
            failed.append(error)
            if server is not None:
                server.should_exit = True

        _check_port(args.host, args.port)
        app = create_app(load, options, on_load_error=on_load_error)
        config = uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            http=head_timeout_protocol(args.read_timeout),
            # The app writes its own access log (with the request id); uvicorn's stays off.
            access_log=False,
            log_level="info" if args.verbose else "warning",
            timeout_graceful_shutdown=None,  # SIGTERM: finish every request in flight
        )
        server = uvicorn.Server(config)
        if args.access_log:
            _log_access()
        out(f"loading the models; http://{args.host}:{args.port}/health answers 200 when ready")
        # uvicorn handles SIGINT/SIGTERM while it runs (stop listening, finish the requests in
        # flight), then raises the signal again for the handler it found; that handler notes it, so
        # a drained server exits with status 0 instead of dying by the signal.
        stopped_by: list[int] = []
        previous = {
            s: signal.signal(s, lambda signum, frame: stopped_by.append(signum))
            for s in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            server.run()
        except SystemExit as e:
            # uvicorn exits (status 3) when it cannot bind; the port was free a moment ago.
            if server.started:
                raise
            raise CliError(f"could not listen on {args.host}:{args.port}: the bind failed") from e
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if stopped_by:
            out(
                f"stopped by {signal.Signals(stopped_by[0]).name}; "
                "the requests in flight were answered"
            )
        if failed:
            error = failed[0]
            if isinstance(error, CliError):
                raise error
            raise CliError(f"loading the models failed: {error}") from error
        if not server.started:
            raise CliError(f"could not listen on {args.host}:{args.port} (see the error above)")
        return EXIT_OK
    finally:
        if collection_args is not None:
            collection_args[0].close()


def _check_port(host: str, port: int) -> None:
    """Fail at once, one line, when the address cannot be bound (in use, not this machine's)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CliError(f"cannot listen on {host}:{port}: {e.strerror}") from e
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # As uvicorn binds: SO_REUSEADDR, so a port in TIME_WAIT is not reported as busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as e:
            raise CliError(
                f"cannot listen on {host}:{port}: {e.strerror}; choose another --port"
            ) from e


def _log_access() -> None:
    """The access log on stderr at INFO, whatever the level of the other logs (-v or not)."""
    from qwen3_rag.server.app import access_logger

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s access: %(message)s"))
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    access_logger.propagate = False  # one line, not a second copy through the package's handler


def _open_store(
    args: argparse.Namespace, embed_options: dict[str, Any]
) -> tuple[Any, tuple[str, dict[str, Any]]]:
    """The store to search (open, read-locked while serving) and its embedder's settings.

    The collection's stored settings decide the embedder; given ones must match them (the
    library's one check, :func:`~qwen3_rag.indexing.store.embedder_settings`).
    """
    from qwen3_rag.indexing import open_store
    from qwen3_rag.indexing.store import embedder_settings

    require("chromadb")
    where = store_options(args)
    opened = open_store(where, write=False, rebuild_hint=rebuild_hint(None, where))
    try:
        with opened.errors():
            stored = opened.stored_config()
        if stored is None:
            raise CliError(
                f"collection {where.collection!r} does not exist; run `qwen3-rag index PATH` first"
            )
        settings = embedder_settings(where.collection, stored, args.embedding_model, embed_options)
    except BaseException:
        opened.close()
        raise
    return opened, settings


def register(sub: Any) -> None:
    """Add ``serve`` to the ``qwen3-rag`` subcommands."""
    serve = sub.add_parser(
        "serve",
        help="serve the models over HTTP (OpenAI, Cohere, TEI APIs) with a search page",
        description="Serve Qwen3-Embedding and/or Qwen3-Reranker on the OpenAI (/v1/embeddings), "
        "Cohere (/v2/embed, /v2/rerank), Jina (/v1/rerank) and TEI (/rerank) APIs, batching "
        "concurrent requests together. With --db or --chroma-url, /v1/search and a search page "
        "at / query that collection.",
    )
    serve.add_argument("--embedding-model", default=None, help="hub id or local folder")
    serve.add_argument("--reranker-model", default=None, help="hub id or local folder")
    add_store_flags(
        serve, db_help="embedded Chroma folder to search", url_help="Chroma server to search"
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 for all)",
    )
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_VARIABLE}, else none)",
    )
    limits = serve.add_argument_group("limits")
    limits.add_argument(
        "--max-body-mb", type=float, default=16, help="largest request body in MiB (default: 16)"
    )
    limits.add_argument(
        "--max-inputs", type=int, default=2048, help="most texts per request (default: 2048)"
    )
    limits.add_argument(
        "--max-request-tokens",
        type=int,
        default=1_000_000,
        help="most tokens one request may make the model read (default: 1000000)",
    )
    limits.add_argument(
        "--timeout",
        type=float,
        default=300,
        help="seconds a request may wait for its result, then 504 (default: 300)",
    )
    limits.add_argument(
        "--read-timeout",
        type=float,
        default=60,
        help="seconds a client may take to send its request head, and its body; then 408 "
        "(default: 60)",
    )
    limits.add_argument(
        "--max-queue",
        type=int,
        default=256,
        help="requests each model holds at once; more get 503 + Retry-After (default: 256)",
    )
    limits.add_argument(
        "--max-batch-requests",
        type=int,
        default=64,
        help="most requests whose texts share one forward; 1 turns batching across requests "
        "off (default: 64)",
    )
    serve.add_argument(
        "--access-log",
        action="store_true",
        help="log each request's method, path, status, time and x-request-id (never its body)",
    )
    serve.add_argument(
        "--served-model-name",
        default=None,
        help="the embedding model's name in answers (/v1/models, /health, 'model' fields; "
        "default: the hub id, or a local folder's own name, never its path)",
    )
    serve.add_argument(
        "--reranker-served-model-name",
        default=None,
        help="the same for the reranker",
    )
    serve.add_argument(
        "--rerank-documents",
        choices=("object", "string"),
        default="object",
        help='how POST /rerank returns documents: {"text": ...} as vLLM, Cohere and Jina '
        "(LiteLLM's hosted_vllm/), or plain strings as Infinity (LiteLLM's infinity/) "
        "(default: object)",
    )
    serve.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let browser pages from ORIGIN call the API (repeatable; '*' for any; default: none)",
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="library and server logs")
    add_config_flags(
        serve.add_argument_group(
            "embedding model options (the runtime ones, such as --device, apply to the "
            "reranker too)"
        ),
        EmbedderConfig,
    )
    add_config_flags(
        serve.add_argument_group("reranker options (override the shared ones)"),
        RerankerConfig,
        prefix=RERANKER_PREFIX,
    )
    serve.set_defaults(func=cmd_serve)
