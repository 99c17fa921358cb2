"""`qwen3-rag serve` as a real process on 127.0.0.1, driven by the official client libraries.

Two servers per module: ``server`` (both models, a Chroma collection, an API key, tight limits)
and ``busy_server`` (a queue of two requests, a short timeout, batching across requests off),
which the SIGTERM test stops last.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from conftest import CORPUS, free_port

KEY = "test-key-8d1f"
EMBED_OPTS = ["--max-length", "64"]
RERANK_OPTS = ["--reranker-max-length", "128"]
TASK = "Given a question, find the passage that answers it"

pytestmark = pytest.mark.slow


# -- fixtures ------------------------------------------------------------------------------------
def _start(args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QWEN3_RAG_API_KEY": ""}
    env.pop("QWEN3_RAG_API_KEY")
    handle = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen3_rag", "serve", "--port", str(port), *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the server exited: {log.read_text()}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise AssertionError(f"the server was not ready in 180 s: {log.read_text()}")


#: The process behind each server URL (the SIGTERM test signals it).
PROCESSES: dict[str, subprocess.Popen[bytes]] = {}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def emb(embed_eos_path):
    from qwen3_rag.core import Qwen3Embedder

    return Qwen3Embedder(embed_eos_path, max_length=64, show_progress=False)


@pytest.fixture(scope="module")
def rr(reranker_path):
    from qwen3_rag.core import Qwen3Reranker

    return Qwen3Reranker(reranker_path, max_length=128, show_progress=False)


def _stdlib_passages() -> list[tuple[str, str]]:
    """Real text nobody here wrote: docstrings of the standard library."""
    import json as json_module
    import os.path
    import shutil
    import textwrap

    out = []
    for module in (json_module, os.path, shutil, textwrap):
        for name in sorted(dir(module)):
            doc = getattr(getattr(module, name), "__doc__", None)
            if callable(getattr(module, name)) and doc and len(doc) > 80 and name[0] != "_":
                out.append((f"{module.__name__}.{name}", " ".join(doc.split())[:600]))
    return out[:40]


@pytest.fixture(scope="module")
def db(tmp_path_factory, emb):
    """An embedded Chroma collection built with the tiny embedder (as `qwen3-rag index` does)."""
    from chromadb.api.client import SharedSystemClient

    from qwen3_rag.indexing import StoreOptions, open_store

    path = tmp_path_factory.mktemp("server-db")
    passages = _stdlib_passages()
    with open_store(StoreOptions(db=str(path), collection="docs"), write=True) as store:
        store.open_for(emb).add(
            ids=[name for name, _ in passages],
            documents=[text for _, text in passages],
            metadatas=[{"source": f"stdlib/{name}"} for name, _ in passages],
        )
    SharedSystemClient.clear_system_cache()
    return path


@pytest.fixture(scope="module")
def server(embed_eos_path, reranker_path, db, tmp_path_factory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server-log") / "server.log"
    proc, url = _start(
        [
            "--db",
            str(db),
            "--collection",
            "docs",
            "--embedding-model",
            embed_eos_path,
            "--reranker-model",
            reranker_path,
            *EMBED_OPTS,
            *RERANK_OPTS,
            "--api-key",
            KEY,
            "--max-inputs",
            "400",
            "--max-body-mb",
            "0.25",
            "--max-request-tokens",
            "10000",
        ],
        log,
    )
    PROCESSES[url] = proc
    yield url
    _stop(proc)
    # Request text is never logged.
    assert "Beijing" not in log.read_text()


@pytest.fixture(scope="module")
def busy(
    embed_eos_path, reranker_path, tmp_path_factory
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    log = tmp_path_factory.mktemp("busy-log") / "server.log"
    proc, url = _start(
        [
            "--embedding-model",
            embed_eos_path,
            "--reranker-model",
            reranker_path,
            "--max-length",
            "256",
            *RERANK_OPTS,
            "--max-queue",
            "2",
            "--timeout",
            "1",
            "--max-batch-requests",
            "1",
        ],
        log,
    )
    yield url, proc
    _stop(proc)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def _floats(data: list[list[float]]) -> np.ndarray:
    return np.asarray(data, dtype=np.float32)


# -- the official clients ------------------------------------------------------------------------
def test_openai_client_float_base64_dimensions_and_query_conventions(server, emb, embed_eos_path):
    import openai

    from qwen3_rag.core import Qwen3Embedder
    from qwen3_rag.core.spec import format_query

    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)
    want = emb.embed_documents(CORPUS)
    got = client.embeddings.create(model="qwen3", input=CORPUS, encoding_format="float")
    assert [d.index for d in got.data] == list(range(len(CORPUS)))
    np.testing.assert_array_equal(_floats([d.embedding for d in got.data]), want)
    assert got.usage.prompt_tokens == sum(len(r) for r in emb.encode_ids(CORPUS))
    # Asked for explicitly, base64 comes back as the string: little-endian float32 bytes.
    got = client.embeddings.create(model="qwen3", input=CORPUS, encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in got.data]
    np.testing.assert_array_equal(np.stack(decoded), want)
    # The client's default asks for base64 and decodes it as little-endian float32.
    got = client.embeddings.create(model="qwen3", input="The capital of China is Beijing.")
    np.testing.assert_array_equal(_floats([got.data[0].embedding]), want[:1])

    small = Qwen3Embedder(embed_eos_path, max_length=64, dimensions=32, show_progress=False)
    got = client.embeddings.create(model="qwen3", input=CORPUS[:4], dimensions=32)
    np.testing.assert_array_equal(
        _floats([d.embedding for d in got.data]), small.embed_documents(CORPUS[:4])
    )

    queries = ["what is the capital of China?", "gravity"]
    # The vLLM convention: the client formats the query itself; the text is embedded as is.
    formatted = [format_query(q, TASK) for q in queries]
    got = client.embeddings.create(model="qwen3", input=formatted)
    np.testing.assert_array_equal(
        _floats([d.embedding for d in got.data]), emb.embed_queries(queries, TASK)
    )
    # Our extension fields ask for the query path.
    got = client.embeddings.create(
        model="qwen3", input=queries, extra_body={"input_type": "query", "instruction": TASK}
    )
    np.testing.assert_array_equal(
        _floats([d.embedding for d in got.data]), emb.embed_queries(queries, TASK)
    )
    got = client.embeddings.create(model="qwen3", input=queries, extra_body={"input_type": "query"})
    np.testing.assert_array_equal(
        _floats([d.embedding for d in got.data]), emb.embed_queries(queries)
    )

    with pytest.raises(openai.UnprocessableEntityError) as e:  # the field is named
        client.embeddings.create(model="qwen3", input=[[1, 2, 3]])
    assert e.value.body["param"] == "input[0]"
    assert "check_embedding_ctx_length=False" in e.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model="qwen3", input="x"
        )


def test_cohere_client_embed_and_rerank(server, emb, rr):
    import cohere

    client = cohere.ClientV2(api_key=KEY, base_url=server)
    docs = client.embed(
        model="qwen3", texts=CORPUS, input_type="search_document", embedding_types=["float"]
    )
    np.testing.assert_array_equal(_floats(docs.embeddings.float_), emb.embed_documents(CORPUS))
    queries = client.embed(
        model="qwen3",
        texts=["capital of China?"],
        input_type="search_query",
        embedding_types=["float"],
        output_dimension=32,
    )
    from qwen3_rag.core import Qwen3Embedder

    small = Qwen3Embedder(emb.model_name, max_length=64, dimensions=32, show_progress=False)
    np.testing.assert_array_equal(
        _floats(queries.embeddings.float_), small.embed_queries(["capital of China?"])
    )

    ranked = client.rerank(model="qwen3", query="capital of China?", documents=CORPUS, top_n=4)
    want_r = rr.rerank("capital of China?", CORPUS, top_n=4)
    assert [(r.index, r.relevance_score) for r in ranked.results] == [
        (w.index, w.score) for w in want_r
    ]
    with pytest.raises(cohere.core.api_error.ApiError) as e:
        client.rerank(model="qwen3", query="q", documents=[])
    assert e.value.status_code == 422 and "documents" in e.value.body["message"]


def test_langchain_openai_embeddings_and_cohere_rerank(server, emb, rr):
    from langchain_cohere import CohereRerank
    from langchain_core.documents import Document
    from langchain_openai import OpenAIEmbeddings

    embeddings = OpenAIEmbeddings(
        base_url=f"{server}/v1", api_key=KEY, model="qwen3", check_embedding_ctx_length=False
    )
    np.testing.assert_array_equal(
        _floats(embeddings.embed_documents(CORPUS)), emb.embed_documents(CORPUS)
    )
    np.testing.assert_array_equal(
        _floats([embeddings.embed_query("capital?")]), emb.embed_documents(["capital?"])
    )
    rerank = CohereRerank(base_url=server, cohere_api_key=KEY, model="qwen3", top_n=3)
    docs = [Document(page_content=t, metadata={"i": i}) for i, t in enumerate(CORPUS)]
    got = rerank.compress_documents(docs, "capital of China?")
    want = rr.rerank("capital of China?", CORPUS, top_n=3)
    assert [(d.metadata["i"], d.metadata["relevance_score"]) for d in got] == [
        (w.index, w.score) for w in want
    ]


def test_llamaindex_tei_rerank_postprocessor(server, rr):
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    post = TextEmbeddingInference(base_url=server, auth_token=f"Bearer {KEY}", top_n=3)
    nodes = [
        NodeWithScore(node=TextNode(text=t, id_=str(i)), score=0.0)
        for i, t in enumerate(CORPUS[:8])
    ]
    got = post.postprocess_nodes(nodes, query_str="capital of China?")
    want = rr.rerank("capital of China?", CORPUS[:8], top_n=3)
    assert [(n.node.id_, n.score) for n in got] == [(str(w.index), w.score) for w in want]


# -- concurrency -----------------------------------------------------------------------------------
def test_64_concurrent_clients_mixing_embed_and_rerank_get_the_sequential_results(server, emb, rr):
    texts = [t for t in CORPUS if t.strip()] + [f"passage number {i}" for i in range(20)]
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(64):
        picked = [texts[j] for j in rng.choice(len(texts), size=1 + i % 5, replace=False)]
        jobs.append(("embed" if i % 2 else "rerank", f"query {i}", picked))
    bad = 17  # a malformed request among them
    want = [
        emb.embed_documents(docs) if kind == "embed" else rr.score(q, docs)
        for kind, q, docs in jobs
    ]

    def call(i: int) -> httpx.Response:
        kind, q, docs = jobs[i]
        if i == bad:
            return httpx.post(
                f"{server}/v1/embeddings",
                json={"input": [*docs, None]},
                headers=_auth(),
                timeout=120,
            )
        if kind == "embed":
            return httpx.post(
                f"{server}/v1/embeddings", json={"input": docs}, headers=_auth(), timeout=120
            )
        return httpx.post(
            f"{server}/v2/rerank",
            json={"query": q, "documents": docs},
            headers=_auth(),
            timeout=120,
        )

    barrier = threading.Barrier(64)

    def run(i: int) -> httpx.Response:
        barrier.wait()
        return call(i)

    with cf.ThreadPoolExecutor(64) as pool:
        answers = list(pool.map(run, range(64)))
    for i, (answer, (kind, _, docs)) in enumerate(zip(answers, jobs, strict=True)):
        if i == bad:
            assert answer.status_code == 422
            assert answer.json()["error"]["param"] == f"input[{len(docs)}]"
            continue
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if kind == "embed":
            assert [d["index"] for d in body["data"]] == list(range(len(docs)))
            got = _floats([d["embedding"] for d in body["data"]])
            # A request that shared a forward with others differs from its lone run only by
            # the matmul's batch-size rounding (the core's own batch invariance bound).
            np.testing.assert_allclose(got, want[i], atol=2e-5, rtol=0)
        else:
            # Rerank requests keep their own forwards (one query's prefix each): exact.
            scores = {r["index"]: r["relevance_score"] for r in body["results"]}
            assert scores == dict(enumerate(want[i]))


# -- limits and faults ------------------------------------------------------------------------------
def test_api_key_and_error_shapes(server):
    cases = [
        ("/v1/embeddings", {"input": "x"}, lambda b: b["error"]["type"] == "authentication_error"),
        (
            "/v2/embed",
            {"texts": ["x"], "input_type": "search_query"},
            lambda b: "API key" in b["message"],
        ),
        ("/v2/rerank", {"query": "q", "documents": ["d"]}, lambda b: "API key" in b["message"]),
        ("/rerank", {"query": "q", "texts": ["d"]}, lambda b: b["error_type"] == "Unauthorized"),
        ("/v1/search", {"query": "q"}, lambda b: "API key" in b["message"]),
    ]
    for path, body, shape in cases:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": KEY}):
            r = httpx.post(server + path, json=body, headers=headers)
            assert r.status_code == 401, (path, headers)
            assert shape(r.json()), (path, r.text)
    assert httpx.get(f"{server}/v1/models").status_code == 401
    assert httpx.get(f"{server}/health").status_code == 200  # open
    models = httpx.get(f"{server}/v1/models", headers=_auth()).json()
    assert len(models["data"]) == 2


def test_bad_requests_name_the_field_and_leave_the_server_working(server, emb):
    def post(path: str, **kwargs) -> httpx.Response:
        return httpx.post(server + path, headers={**_auth(), **kwargs.pop("headers", {})}, **kwargs)

    r = post("/v1/embeddings", json={"input": ["a", 5]})
    assert r.status_code == 422 and r.json()["error"]["param"] == "input[1]"
    r = post("/v1/embeddings", json={"input": "a", "dimension": 32})
    assert r.status_code == 422 and r.json()["error"]["param"] == "dimension"
    r = post("/v1/embeddings", json={"input": "a", "dimensions": 4096})
    assert r.status_code == 422 and r.json()["error"]["param"] == "dimensions"
    # The core's one range check, named by the request's field.
    assert "dimensions=4096 is out of range" in r.json()["error"]["message"]
    assert "32 to 64" in r.json()["error"]["message"]
    r = post("/v1/embeddings", json={"input": []})
    assert r.status_code == 422 and "must not be empty" in r.json()["error"]["message"]
    r = post("/v2/embed", json={"texts": "one text", "input_type": "search_document"})
    assert r.status_code == 422 and r.json()["message"].startswith("texts")
    r = post("/v2/rerank", json={"query": "q", "documents": ["a"], "top_n": "3"})
    assert r.status_code == 422 and r.json()["message"].startswith("top_n")
    r = post("/rerank", json={"query": "q", "texts": []})
    assert r.status_code == 422 and r.json()["error_type"] == "Validation"
    r = post("/v2/embed", json={"texts": ["x"], "embedding_types": ["int4"]})
    assert r.status_code == 422 and r.json()["message"].startswith("embedding_types")
    # Limits: inputs, tokens, body size.
    r = post("/v1/embeddings", json={"input": ["x"] * 401})
    assert r.status_code == 422 and "--max-inputs" in r.json()["error"]["message"]
    r = post("/v1/embeddings", json={"input": ["word " * 100] * 200})
    assert r.status_code == 422 and "--max-request-tokens" in r.json()["error"]["message"]
    r = post("/v1/embeddings", json={"input": "x" * 300_000})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"
    # Bodies that are not JSON, or not UTF-8.
    r = post(
        "/v1/embeddings",
        content=b'{"input": "caf\xe9"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "UTF-8" in r.json()["error"]["message"]
    r = post(
        "/v2/rerank",
        content=b'{"query": "q", "documents": [',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and "not JSON" in r.json()["message"]
    r = post("/rerank", content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "JSON object" in r.json()["error"]
    # TEI: a pair longer than max_length needs truncate=true, as in TEI.
    r = post("/rerank", json={"query": "q", "texts": ["word " * 300]})
    assert r.status_code == 413
    assert (
        post("/rerank", json={"query": "q", "texts": ["word " * 300], "truncate": True}).status_code
        == 200
    )
    # Still serving, and exactly.
    r = post("/v1/embeddings", json={"input": CORPUS[:3]})
    np.testing.assert_array_equal(
        _floats([d["embedding"] for d in r.json()["data"]]), emb.embed_documents(CORPUS[:3])
    )


def test_tei_raw_scores_return_text_and_cohere_v1_documents(server, rr):
    docs = CORPUS[:5]
    scores = rr.score("capital?", docs)
    r = httpx.post(
        f"{server}/rerank",
        json={"query": "capital?", "texts": docs, "return_text": True},
        headers=_auth(),
    ).json()
    assert [x["score"] for x in r] == sorted(scores, reverse=True)
    assert all(x["text"] == docs[x["index"]] for x in r)
    raw = httpx.post(
        f"{server}/rerank",
        json={"query": "capital?", "texts": docs, "raw_scores": True},
        headers=_auth(),
    ).json()
    for x in raw:
        p = scores[x["index"]]
        assert x["score"] == pytest.approx(np.log(p / (1 - p)), abs=1e-5)
    v1 = httpx.post(
        f"{server}/v1/rerank",
        json={
            "query": "capital?",
            "documents": [{"text": d} for d in docs],
            "return_documents": True,
            "top_n": 2,
        },
        headers=_auth(),
    ).json()
    assert [(x["index"], x["relevance_score"], x["document"]["text"]) for x in v1["results"]] == [
        (r.index, r.score, r.document) for r in rr.rerank("capital?", docs, top_n=2)
    ]


def test_search_api_and_metrics(server, emb, rr):
    r = httpx.post(
        f"{server}/v1/search", json={"query": "copy a file", "k": 10, "top_n": 4}, headers=_auth()
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["rank"] for x in results] == [1, 2, 3, 4]
    scores = [x["score"] for x in results]
    assert scores == sorted(scores, reverse=True)
    assert all(x["source"].startswith("stdlib/") for x in results)
    # The scores are the reranker's for those passages.
    assert scores == rr.score("copy a file", [x["text"] for x in results])
    # A filter Chroma refuses is the caller's mistake, in Chroma's words; a surrogate is no 500.
    r = httpx.post(
        f"{server}/v1/search",
        json={"query": "copy a file", "where": {"source": {"$nope": 1}}},
        headers=_auth(),
    )
    assert r.status_code == 422 and r.json()["message"].startswith("where: "), r.text
    assert "$nope" in r.json()["message"]
    r = httpx.post(
        f"{server}/v1/search",
        content=json.dumps({"query": "copy \ud800 file", "top_n": 1}).encode(),
        headers={**_auth(), "Content-Type": "application/json"},
    )
    assert r.status_code == 200 and r.json()["query"] == "copy \ufffd file"
    metrics = httpx.get(f"{server}/metrics").text
    for name in (
        'qwen3_rag_requests_total{endpoint="/v1/search",status="200"}',
        "qwen3_rag_request_errors_total",
        'qwen3_rag_input_tokens_total{model="embedding"}',
        'qwen3_rag_batch_rows_count{model="reranker"}',
        'qwen3_rag_queue_depth{model="embedding"} 0.0',
        'qwen3_rag_request_duration_seconds_bucket{endpoint="/v1/search"',
    ):
        assert name in metrics, name


def test_search_page_in_headless_chromium(server, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            page.goto(server + "/")
            page.fill("#query", "copy a file with its permissions")
            page.click("#go")  # no key yet: the server refuses, the page says so
            page.wait_for_selector("#status:has-text('needs an API key')", timeout=30_000)
            page.fill("#api_key", KEY)
            page.click("#go")
            page.wait_for_selector(".result", timeout=60_000)
            scores = [float(s) for s in page.locator(".result .score").all_inner_texts()]
            assert len(scores) == 5 and scores == sorted(scores, reverse=True)
            assert all(
                s.startswith("stdlib/") for s in page.locator(".result .source").all_inner_texts()
            )
            # Passages are clipped to three lines, and expand on request.
            text = page.locator(".result .text").first
            clipped = text.evaluate("e => e.clientHeight")
            assert clipped < text.evaluate("e => e.scrollHeight")
            page.locator(".result .more").first.click()
            assert text.evaluate("e => e.clientHeight") > clipped
            page.locator(".result .more").first.click()
            assert page.title() == "qwen3-rag search"
            shot = tmp_path / "search-page.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"screenshot: {shot}")
            if os.environ.get("QWEN3_RAG_SCREENSHOT"):  # how docs/search-page.png is made
                page.screenshot(path=os.environ["QWEN3_RAG_SCREENSHOT"], full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()


# -- queue, timeout, disconnect, SIGTERM (the busy server) -----------------------------------------
HEAVY = [f"word {i} " * 100 for i in range(2000)]  # 256 tokens each on the busy server


def test_full_queue_answers_503_with_retry_after(busy):
    url, _ = busy
    with cf.ThreadPoolExecutor(8) as pool:
        answers = list(
            pool.map(
                lambda i: httpx.post(
                    f"{url}/v1/embeddings", json={"input": HEAVY[:300]}, timeout=60
                ),
                range(8),
            )
        )
    codes = sorted(a.status_code for a in answers)
    # At most two are held at once (they may run past the 1 s timeout); the rest are refused.
    assert 503 in codes and set(codes) <= {200, 503, 504}, codes
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["Retry-After"] == "1"
    assert "queue is full" in refused.json()["error"]["message"]


def test_timeout_and_disconnect_leave_no_stuck_batch(busy, emb):
    url, _ = busy
    r = httpx.post(f"{url}/v1/embeddings", json={"input": HEAVY}, timeout=60)
    assert r.status_code == 504 and "--timeout" in r.json()["error"]["message"]
    with pytest.raises(httpx.ReadTimeout):  # the client gives up first
        httpx.post(f"{url}/v2/rerank", json={"query": "q", "documents": HEAVY}, timeout=0.3)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{url}/metrics").text
        if (
            'queue_depth{model="embedding"} 0.0' in metrics
            and 'queue_depth{model="reranker"} 0.0' in metrics
        ):
            break
        time.sleep(0.2)
    else:
        raise AssertionError("work of abandoned requests is still queued")
    # The server saw the client leave (499 in its metrics), before its own timeout.
    assert 'requests_total{endpoint="/v2/rerank",status="499"} 1.0' in metrics
    r = httpx.post(f"{url}/v1/embeddings", json={"input": ["after"]}, timeout=30)
    assert r.status_code == 200
    np.testing.assert_array_equal(
        _floats([r.json()["data"][0]["embedding"]]), emb.embed_documents(["after"])
    )


def test_base64_is_little_endian_float32(server, emb):
    r = httpx.post(
        f"{server}/v1/embeddings",
        json={"input": ["x"], "encoding_format": "base64"},
        headers=_auth(),
    )
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), emb.embed_documents(["x"])[0])
    assert json.loads(r.text)["usage"]["total_tokens"] == 2


def test_sigterm_finishes_the_requests_in_flight(server, emb):
    """Last in the module: it stops the main server."""
    batches = [[f"in flight {i} {j} " * 6 for j in range(150)] for i in range(4)]
    barrier = threading.Barrier(4)

    def send(texts: list[str]) -> httpx.Response:
        barrier.wait()
        return httpx.post(
            f"{server}/v1/embeddings", json={"input": texts}, headers=_auth(), timeout=120
        )

    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(send, b) for b in batches]
        deadline = time.monotonic() + 60
        while 'queue_depth{model="embedding"} 4.0' not in httpx.get(f"{server}/metrics").text:
            assert time.monotonic() < deadline and not any(f.done() for f in futures)
            time.sleep(0.01)
        PROCESSES[server].send_signal(signal.SIGTERM)
        answers = [f.result() for f in futures]
    for answer, texts in zip(answers, batches, strict=True):
        assert answer.status_code == 200, answer.text
        got = _floats([d["embedding"] for d in answer.json()["data"]])
        np.testing.assert_allclose(got, emb.embed_documents(texts), atol=2e-5, rtol=0)
    assert PROCESSES[server].wait(30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server}/health")


def _confident_reranker(folder: Path, base: str) -> Path:
    """The untied tiny reranker with a scaled "yes" row: log-odds far past float32 P(yes)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    shutil.copytree(base, folder)
    weights = load_file(folder / "model.safetensors")
    yes = AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("yes")
    weights["lm_head.weight"][yes] *= 3000
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tei_raw_scores_are_the_models_log_odds_even_where_p_yes_saturates(
    reranker_untied_path, tmp_path
):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qwen3_rag.core import Qwen3Reranker

    model_dir = _confident_reranker(tmp_path / "confident", reranker_untied_path)
    query, docs = "capital?", CORPUS[:6]
    # The reference: the full LM head of transformers' model on the reranker's exact ids.
    rr = Qwen3Reranker(model_dir, max_length=128, show_progress=False)
    lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    want = []
    for ids in rr.encode_ids(query, docs):
        with torch.no_grad():
            logits = lm(input_ids=torch.tensor([ids])).logits[0, -1].double()
        want.append(float(logits[yes] - logits[no]))
    # Past about +-17 (yes) or -104 (no), float32 P(yes) is exactly 1 or 0 and holds no logit.
    assert max(abs(z) for z in want) > 40, want

    proc, url = _start(["--reranker-model", str(model_dir), *RERANK_OPTS], tmp_path / "log")
    try:
        raw = httpx.post(f"{url}/rerank", json={"query": query, "texts": docs, "raw_scores": True})
        plain = httpx.post(f"{url}/rerank", json={"query": query, "texts": docs})
    finally:
        _stop(proc)
    got = {x["index"]: x["score"] for x in raw.json()}
    for i, z in enumerate(want):
        assert got[i] == pytest.approx(z, rel=1e-4, abs=1e-3), (i, got[i], z)
    # The scores beside them are still the in-process P(yes), bit for bit.
    assert {x["index"]: x["score"] for x in plain.json()} == dict(enumerate(rr.score(query, docs)))
