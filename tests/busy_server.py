"""A real HTTP server process that behaves like an overloaded or slow model server.

Run as ``python tests/busy_server.py PORT``. It speaks just enough of the OpenAI embeddings and
Cohere rerank APIs for the clients' retry, timeout and error paths, which a healthy server
cannot be made to show on demand:

- ``POST /_script`` with ``{"fail": n, "status": 503, "retry_after": "0.3", "delay": 0}``: the
  next ``n`` model requests answer ``status`` (with that ``Retry-After`` header, if any); every
  model request first sleeps ``delay`` seconds.
- ``GET /_log``: every model request so far: ``{"path", "headers", "body", "at"}``.
- ``POST /v1/embeddings``: input ``i`` gets a 32-value float32 vector, ``[len(text), i, 1/3,
  ...]``, as base64 or floats per ``encoding_format``.
- ``POST /v2/rerank``: document ``i`` scores ``1 / (2 + i)``, best first.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

WIDTH = 32
_state: dict = {"fail": 0, "status": 503, "retry_after": None, "delay": 0.0, "log": []}
_lock = threading.Lock()


def vector(text: str, index: int) -> np.ndarray:
    """The vector this server returns for ``text`` at position ``index``."""
    out = np.full(WIDTH, 1 / 3, dtype=np.float32)
    out[0], out[1] = len(text), index
    return out


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, status: int, body: object, headers: dict | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/_log":
            with _lock:
                self._send(200, _state["log"])
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if self.path == "/_script":
            with _lock:
                _state.update(body)
                _state["log"] = []
            self._send(200, {"ok": True})
            return
        with _lock:
            _state["log"].append(
                {"path": self.path, "headers": dict(self.headers), "body": body, "at": time.time()}
            )
            failing = _state["fail"] > 0
            if failing:
                _state["fail"] -= 1
            status, retry_after, delay = _state["status"], _state["retry_after"], _state["delay"]
        time.sleep(delay)
        if failing:
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            self._send(status, {"error": {"message": "queue full, try later"}}, headers)
        elif self.path == "/v1/embeddings":
            data = []
            for i, text in enumerate(body["input"]):
                vec = vector(text, i)
                embedding = (
                    base64.b64encode(vec.astype("<f4").tobytes()).decode()
                    if body.get("encoding_format") == "base64"
                    else vec.tolist()
                )
                data.append({"object": "embedding", "index": i, "embedding": embedding})
            self._send(200, {"object": "list", "data": data[::-1], "model": "busy-embedder"})
        elif self.path == "/v2/rerank":
            results = [
                {"index": i, "relevance_score": 1 / (2 + i)} for i in range(len(body["documents"]))
            ]
            self._send(200, {"id": "x", "results": results, "meta": {}})
        else:
            self._send(404, {"error": {"message": f"no route {self.path}"}})


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()
