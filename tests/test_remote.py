"""RemoteEmbedder / RemoteReranker against real server processes on 127.0.0.1.

One ``qwen3-rag serve`` process (tiny checkpoints, an API key) is shared by the module: the
clients' results must equal the in-process core's exactly, alone and behind every adapter. The
retry, timeout and error paths run against ``tests/busy_server.py``, a real HTTP server process
that answers 503/429 or sleeps on demand.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from busy_server import vector

from qwen3_rag import (
    Qwen3Embedder,
    Qwen3Reranker,
    RemoteEmbedder,
    RemoteError,
    RemoteReranker,
    RerankResult,
)
from qwen3_rag.remote import RemoteTimeoutError

from conftest import free_port

KEY = "test-key-0123"
HERE = Path(__file__).parent
QUERIES = ["What is the capital of China?", "Explain gravity", "", "naïve café 🐍 ünïcode"]
DOCS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    "def add(a, b):\n    return a + b",
    "Ünïcode téxt with emoji 🐍 and CJK 北京",
    "x",
]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen, limit: float = 120.0) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited with {proc.returncode} before it was ready")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url}/health not 200 within {limit} s")


def _serve(*args: str) -> tuple[str, subprocess.Popen]:
    """``qwen3-rag serve ARGS`` on a free loopback port with the test key, once healthy."""
    port = free_port()
    argv = [sys.executable, "-m", "qwen3_rag", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "QWEN3_RAG_API_KEY": KEY}
    proc = subprocess.Popen(
        [*argv, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
    except BaseException:
        _stop(proc)
        raise
    return url, proc


@pytest.fixture(scope="module")
def server(embed_eos_path: str, reranker_path: str) -> Iterator[str]:
    # Served under its path, as the README says for a local folder: a Chroma collection filled
    # through the server records a model that reopens in-process (the default name, the
    # folder's own name, would not load here).
    url, proc = _serve(
        "--embedding-model",
        embed_eos_path,
        "--served-model-name",
        embed_eos_path,
        "--reranker-model",
        reranker_path,
    )
    try:
        yield url
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def busy() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "busy_server.py"), str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _script(url: str, **script: object) -> None:
    body = {"fail": 0, "status": 503, "retry_after": None, "delay": 0.0, **script}
    httpx.post(url + "/_script", json=body, timeout=5).raise_for_status()


def _log(url: str) -> list[dict]:
    return httpx.get(url + "/_log", timeout=5).json()


@pytest.fixture(scope="module")
def local_embedder(embed_eos_path: str) -> Qwen3Embedder:
    return Qwen3Embedder(embed_eos_path, device="cpu")


@pytest.fixture(scope="module")
def local_reranker(reranker_path: str) -> Qwen3Reranker:
    return Qwen3Reranker(reranker_path, device="cpu")


# -- against qwen3-rag serve: exactly the core's results ---------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_embeddings_equal_the_core_exactly(server, local_embedder, embed_eos_path):
    remote = RemoteEmbedder(server + "/v1/", api_key=KEY, batch_size=3)
    for task in (None, "Find code that adds numbers", ""):
        got = remote.embed_queries(QUERIES, instruction=task)
        want = local_embedder.embed_queries(QUERIES, instruction=task)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.array_equal(got, want), task
    docs = remote.embed_documents(DOCS)
    assert np.array_equal(docs, local_embedder.embed_documents(DOCS))
    assert remote.embed_documents([]).shape == (0, local_embedder.output_dimensions)
    assert remote.output_dimensions == local_embedder.output_dimensions
    assert remote.model_name  # what the server reports

    # MRL: the server cuts and re-normalises exactly as the core does.
    cut = RemoteEmbedder(server, api_key=KEY, dimensions=32, instruction="Find code")
    small = Qwen3Embedder(embed_eos_path, device="cpu", dimensions=32, instruction="Find code")
    assert np.array_equal(cut.embed_queries(QUERIES), small.embed_queries(QUERIES))
    assert cut.output_dimensions == 32

    with pytest.raises(TypeError, match=r"texts\[1\] must be a str"):
        remote.embed_documents(["ok", 3])  # type: ignore[list-item]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_scores_and_ranking_equal_the_core_exactly(server, local_reranker):
    remote = RemoteReranker(server, api_key=KEY)
    for task in (None, "Find the passage that defines the term", ""):
        assert remote.score(QUERIES[0], DOCS, task) == local_reranker.score(QUERIES[0], DOCS, task)
    # Split into requests of 2 documents: each request scores exactly as the core scores it.
    split = RemoteReranker(server, api_key=KEY, batch_size=2).score(QUERIES[0], DOCS)
    chunks = [DOCS[i : i + 2] for i in range(0, len(DOCS), 2)]
    assert split == [s for chunk in chunks for s in local_reranker.score(QUERIES[0], chunk)]
    for kwargs in ({}, {"top_n": 2}, {"score_threshold": 0.5}, {"top_n": 1, "instruction": "x"}):
        got = remote.rerank(QUERIES[1], DOCS, **kwargs)
        assert got == local_reranker.rerank(QUERIES[1], DOCS, **kwargs), kwargs
        assert all(isinstance(r, RerankResult) for r in got)
    assert remote.score("q", []) == []
    with pytest.raises(ValueError, match="top_n"):
        remote.rerank("q", DOCS, top_n=0)


# -- every adapter takes the clients as model= -------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_langchain_adapters_take_the_clients(server, local_embedder, local_reranker):
    from langchain_core.documents import Document

    from qwen3_rag.integrations.langchain import Qwen3Embeddings, Qwen3Rerank

    remote = Qwen3Embeddings(model=RemoteEmbedder(server, api_key=KEY), instruction="Find code")
    local = Qwen3Embeddings(model=local_embedder, instruction="Find code")
    assert remote.embed_query(QUERIES[0]) == local.embed_query(QUERIES[0])
    assert remote.embed_documents(DOCS) == local.embed_documents(DOCS)
    # Pickled (as multiprocessing and Ray do): the client travels, its connections do not.
    assert pickle.loads(pickle.dumps(remote)).embed_documents(DOCS[:2]) == remote.embed_documents(
        DOCS[:2]
    )
    assert remote.model_dump()["model"] == remote.embedder.model_name

    documents = [Document(page_content=d, metadata={"i": i}) for i, d in enumerate(DOCS)]
    rr_remote = Qwen3Rerank(model=RemoteReranker(server, api_key=KEY), top_n=3)
    rr_local = Qwen3Rerank(model=local_reranker, top_n=3)
    got = rr_remote.compress_documents(documents, QUERIES[0])
    assert got == rr_local.compress_documents(documents, QUERIES[0])
    assert len(got) == 3 and "relevance_score" in got[0].metadata

    with pytest.raises(TypeError, match="RemoteEmbedder"):
        Qwen3Embeddings(model=RemoteReranker(server, api_key=KEY))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_llamaindex_adapters_take_the_clients(server, local_embedder, local_reranker):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from qwen3_rag.integrations.llamaindex import Qwen3Embedding, Qwen3Rerank

    remote = Qwen3Embedding(model=RemoteEmbedder(server, api_key=KEY))
    local = Qwen3Embedding(model=local_embedder)
    assert remote.get_query_embedding(QUERIES[0]) == local.get_query_embedding(QUERIES[0])
    assert remote.get_text_embedding_batch(DOCS) == local.get_text_embedding_batch(DOCS)
    assert remote.model_name == remote.embedder.model_name
    # model_name beside a client names the served model: the same name is accepted.
    named = Qwen3Embedding(model=RemoteEmbedder(server, api_key=KEY), model_name=remote.model_name)
    assert named.model_name == remote.model_name
    with pytest.raises(ValueError, match="name different models"):
        Qwen3Embedding(model=RemoteEmbedder(server, api_key=KEY), model_name="another-model")

    nodes = [NodeWithScore(node=TextNode(text=d), score=0.1) for d in DOCS]
    query = QueryBundle(QUERIES[0])
    got = Qwen3Rerank(model=RemoteReranker(server, api_key=KEY), top_n=2).postprocess_nodes(
        nodes, query
    )
    want = Qwen3Rerank(model=local_reranker, top_n=2).postprocess_nodes(nodes, query)
    assert [(n.node.get_content(), n.score) for n in got] == [
        (n.node.get_content(), n.score) for n in want
    ]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_chroma_collection_with_the_remote_embedder(
    server, local_embedder, embed_eos_path, tmp_path
):
    import chromadb

    from qwen3_rag.integrations.chroma import Qwen3EmbeddingFunction, open_collection

    function = Qwen3EmbeddingFunction(RemoteEmbedder(server, api_key=KEY))
    client = chromadb.PersistentClient(str(tmp_path / "db"))
    collection = open_collection(client, "docs", function)
    collection.add(ids=[str(i) for i in range(len(DOCS))], documents=DOCS)
    assert np.array_equal(np.stack(function(DOCS)), local_embedder.embed_documents(DOCS))
    stored = collection.get(include=["embeddings"])
    order = [int(i) for i in stored["ids"]]
    # Chroma stores cosine-space vectors re-normalised by itself: equal up to that rounding.
    np.testing.assert_allclose(
        np.asarray(stored["embeddings"], dtype=np.float32),
        local_embedder.embed_documents([DOCS[i] for i in order]),
        atol=1e-6,
    )
    # query_texts go through embed_query (with the instruction): the ranking of the core's
    # query vector against the core's document vectors.
    found = collection.query(query_texts=[QUERIES[0]], n_results=3)
    sims = local_embedder.embed_documents(DOCS) @ local_embedder.embed_queries([QUERIES[0]])[0]
    assert found["ids"][0] == [str(i) for i in np.argsort(-sims)[:3]]
    assert np.array_equal(function.embed_query([QUERIES[0]])[0], local_embedder.embed_queries(
        [QUERIES[0]])[0])  # fmt: skip
    config = function.get_config()
    assert config["model"] == function.embedder.model_name == embed_eos_path
    stored = collection.configuration_json["embedding_function"]
    assert stored["name"] == "qwen3_rag" and stored["config"] == config
    assert config["dimensions"] == local_embedder.output_dimensions
    # Reopened with the same function: the stored config matches.
    assert open_collection(client, "docs", function).count() == len(DOCS)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_full_queue_is_waited_out(embed_eos_path, local_embedder, caplog):
    """A server holding one request at a time answers the others 503 + Retry-After: 1."""
    url, proc = _serve("--embedding-model", embed_eos_path, "--max-queue", "1")
    try:
        remote = RemoteEmbedder(url, api_key=KEY, max_retries=20)
        texts = [[f"{d} ({i}, {j})" * 4 for j, d in enumerate(DOCS * 2)] for i in range(6)]
        barrier = threading.Barrier(len(texts))

        def call(batch: list[str]) -> np.ndarray:
            barrier.wait()
            return remote.embed_documents(batch)

        with (
            caplog.at_level(logging.WARNING, logger="qwen3_rag.remote"),
            ThreadPoolExecutor(len(texts)) as pool,
        ):
            results = list(pool.map(call, texts))
        for batch, got in zip(texts, results, strict=True):
            assert np.array_equal(got, local_embedder.embed_documents(batch))
        assert any("HTTP 503" in r.getMessage() for r in caplog.records), "no 503 was seen"
    finally:
        _stop(proc)


# -- keys and unreachable servers --------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_wrong_or_missing_key_is_a_clear_error(server, monkeypatch):
    monkeypatch.delenv("QWEN3_RAG_API_KEY", raising=False)
    for key in ("wrong-key", None):
        with pytest.raises(RemoteError) as caught:
            RemoteEmbedder(server, api_key=key).embed_documents(["x"])
        message = str(caught.value)
        assert caught.value.status == 401 and caught.value.url == server + "/v1/embeddings"
        assert server + "/v1/embeddings" in message and "401" in message and "api_key" in message
        assert "wrong-key" not in message
    with pytest.raises(RemoteError, match="401"):
        RemoteReranker(server, api_key="wrong-key").score("q", ["d"])
    # The key from the environment, as the server reads it.
    monkeypatch.setenv("QWEN3_RAG_API_KEY", KEY)
    assert RemoteReranker(server).score("q", ["d"])[0] >= 0


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_an_unreachable_server_is_named():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(RemoteError) as caught:
        RemoteEmbedder(url, max_retries=2, backoff=0.05).embed_documents(["x"])
    assert f"cannot reach {url}/v1/embeddings after 3 attempt(s)" in str(caught.value)
    assert caught.value.status is None
    assert time.monotonic() - started < 30


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_open_collection_with_an_unreachable_server_fails_and_records_nothing(tmp_path):
    """Chroma swallows get_config's error into a "legacy" config; open_collection does not."""
    import chromadb

    from qwen3_rag.integrations.chroma import Qwen3EmbeddingFunction, open_collection

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    function = Qwen3EmbeddingFunction(RemoteEmbedder(url, max_retries=0))
    client = chromadb.PersistentClient(str(tmp_path / "db"))
    with pytest.raises(RemoteError, match="cannot reach"):
        open_collection(client, "docs", function)
    assert [c.name for c in client.list_collections()] == []


# -- retries, Retry-After, timeouts, wire format: a real busy HTTP server -----------------------
@pytest.mark.slow
@pytest.mark.timeout(60)
def test_busy_answers_are_retried_honouring_retry_after(busy):
    _script(busy, fail=2, status=503, retry_after="0.4")
    remote = RemoteEmbedder(busy, api_key="k", model="busy-embedder", backoff=0.01)
    got = remote.embed_documents(["ab", "cde"])
    assert np.array_equal(got, np.stack([vector("ab", 0), vector("cde", 1)]))
    log = _log(busy)
    assert len(log) == 3
    # Retry-After (0.4 s) won over the 0.01 s backoff, before each retry.
    assert log[1]["at"] - log[0]["at"] >= 0.35 and log[2]["at"] - log[1]["at"] >= 0.35
    # The wire format: base64 float32, the model, the key as a bearer token, no extension field.
    body, headers = log[0]["body"], {k.lower(): v for k, v in log[0]["headers"].items()}
    assert body == {"input": ["ab", "cde"], "encoding_format": "base64", "model": "busy-embedder"}
    assert headers["authorization"] == "Bearer k"

    # 429 too, with an HTTP-date Retry-After.
    _script(busy, fail=1, status=429, retry_after="Thu, 01 Jan 1970 00:00:00 GMT")
    assert RemoteReranker(busy, backoff=0.01).score("q", ["a", "b", "c"]) == [1 / 2, 1 / 3, 1 / 4]
    assert len(_log(busy)) == 2


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_server_that_stays_busy_or_fails_gives_up_with_the_status(busy):
    _script(busy, fail=10, status=503, retry_after="0")
    with pytest.raises(RemoteError) as caught:
        RemoteEmbedder(busy, max_retries=3, backoff=0.01).embed_documents(["x"])
    assert caught.value.status == 503 and len(_log(busy)) == 4
    assert f"{busy}/v1/embeddings was still busy (HTTP 503) after 3 retries" in str(caught.value)
    assert "queue full" in str(caught.value)  # the server's own message
    # Other errors are not retried.
    _script(busy, fail=5, status=422)
    with pytest.raises(RemoteError, match="answered HTTP 422: queue full"):
        RemoteEmbedder(busy, backoff=0.01).embed_documents(["x"])
    assert len(_log(busy)) == 1


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_a_slow_answer_times_out_naming_the_url(busy):
    _script(busy, delay=3.0)
    with pytest.raises(RemoteTimeoutError) as caught:
        RemoteReranker(busy, timeout=0.5).score("q", ["d"])
    assert f"{busy}/v2/rerank did not answer within timeout=0.5 s" in str(caught.value)
    assert isinstance(caught.value, TimeoutError) and len(_log(busy)) == 1  # not sent again


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_vllm_dialect_and_wire_details(busy):
    _script(busy)
    remote = RemoteReranker(busy, server="vllm", instruction="Judge code", model="rr")
    assert remote.rerank("q", ["a", "b"], top_n=1) == [RerankResult(0, 0.5, "a")]
    body = _log(busy)[0]["body"]
    assert (
        body["chat_template_kwargs"] == {"instruction": "Judge code"} and "instruction" not in body
    )
    assert body["model"] == "rr" and body["top_n"] == 2

    _script(busy)
    emb = RemoteEmbedder(busy, instruction="Find code", dimensions=32, batch_size=2)
    vectors = emb.embed_queries(["a", "bb", "ccc"])
    assert vectors.shape == (3, 32) and emb.model_name == "busy-embedder"
    inputs = [entry["body"]["input"] for entry in _log(busy)]
    assert inputs == [["Instruct: Find code\nQuery:a", "Instruct: Find code\nQuery:bb"],
                      ["Instruct: Find code\nQuery:ccc"]]  # fmt: skip
    assert all(entry["body"]["dimensions"] == 32 for entry in _log(busy))


# -- no server needed --------------------------------------------------------------------------
def test_bad_arguments_are_refused_before_any_request():
    with pytest.raises(ValueError, match="http:// or https://"):
        RemoteEmbedder("127.0.0.1:8000")
    with pytest.raises(ValueError, match="dimensions"):
        RemoteEmbedder("http://h", dimensions=8)
    with pytest.raises(ValueError, match="timeout"):
        RemoteEmbedder("http://h", timeout=0)
    with pytest.raises(ValueError, match="server="):
        RemoteReranker("http://h", server="tei")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        RemoteReranker("http://h", batch_size=0)
    with pytest.raises(TypeError, match="single str"):
        RemoteEmbedder("http://h").embed_documents("text")  # type: ignore[arg-type]


def test_the_key_stays_out_of_repr_and_pickles_rebuild_the_connection():
    remote = RemoteEmbedder("http://h:1/v1", api_key="s3cret", dimensions=64)
    assert "s3cret" not in repr(remote) and remote.base_url == "http://h:1"
    copy = pickle.loads(pickle.dumps(remote))
    assert copy.dimensions == 64 and copy.output_dimensions == 64
    assert copy._client.headers["authorization"] == "Bearer s3cret"


def test_base64_decoding_is_bit_exact():
    from qwen3_rag.remote.clients import _vector

    values = np.random.default_rng(0).standard_normal(1024).astype(np.float32)
    encoded = base64.b64encode(values.astype("<f4").tobytes()).decode()
    assert np.array_equal(_vector(encoded), values)
    assert np.array_equal(_vector(json.loads(json.dumps(values.tolist()))), values)
    with pytest.raises(ValueError, match="float32"):
        _vector(base64.b64encode(b"abc").decode())


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_server_benchmark_smoke_run(tmp_path):
    """benchmarks/bench_server.py on the tiny model: it runs, and the server's results are exact."""
    report_path = tmp_path / "server.json"
    argv = [sys.executable, str(HERE.parent / "benchmarks" / "bench_server.py"), "--smoke",
            "--device", "cpu", "--work", str(tmp_path / "models"), "--embed-clients", "8",
            "--rerank-clients", "4", "--rerank-docs", "5", "--json", str(report_path)]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=540)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report_path.with_suffix(".txt").read_text() in out.stdout
    for load in ("embed", "rerank"):
        for mode in ("batched", "one request per forward"):
            row = report[load][mode]
            assert row["requests"] == (16 if load == "embed" else 4)
            assert row["share_of_offline_pct"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
            # A text alone in a forward may differ from the offline batch in the last bits
            # (the core's one-text path); which texts share a forward depends on timing here.
            assert row["max_abs_diff_vs_offline"] <= 1e-6
