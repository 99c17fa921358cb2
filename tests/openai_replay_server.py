"""A loopback HTTP server that answers OpenAI chat-completion requests with recorded replies.

Usage: python tests/openai_replay_server.py REPLIES.json LOG.jsonl

It binds 127.0.0.1 on a free port and prints ``PORT <n>`` once it listens. ``REPLIES.json``::

    {"api_key": "sk-test" | null,      # required bearer key, or none
     "fail_first": 1,                   # answer the first N requests with HTTP 503
     "rules": [{"when": ["substring", ...], "response": {...chat.completion...}}, ...]}

A request gets the response of the first rule whose substrings all occur in its last message;
no match is a 404 (as for an unknown route). Every request is appended to LOG.jsonl with the
status it got, so tests can count calls and retries.
"""

from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


def main() -> int:
    replies: dict[str, Any] = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    log_path = Path(sys.argv[2])
    lock = threading.Lock()
    state = {"requests": 0}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 503:
                self.send_header("Retry-After", "0")
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str) -> None:
            self._send(status, {"error": {"message": message, "type": kind, "code": None}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            with lock:
                state["requests"] += 1
                number = state["requests"]
            prompt = body["messages"][-1]["content"]
            key = replies.get("api_key")
            if self.path != "/v1/chat/completions":
                status = 404
            elif key and self.headers.get("Authorization") != f"Bearer {key}":
                status = 401
            elif number <= replies.get("fail_first", 0):
                status = 503
            else:
                status = 200
            rule = next((r for r in replies["rules"] if all(s in prompt for s in r["when"])), None)
            if status == 200 and rule is None:
                status = 404
            with lock, log_path.open("a", encoding="utf-8") as log:
                log.write(
                    json.dumps(
                        {
                            "status": status,
                            "model": body.get("model"),
                            "seed": body.get("seed"),
                            "prompt": prompt,
                        }
                    )
                    + "\n"
                )
            if status == 401:
                self._error(401, "Incorrect API key provided", "invalid_request_error")
            elif status == 503:
                self._error(503, "The server is overloaded", "server_error")
            elif status == 404:
                self._error(404, "no recorded reply for this request", "not_found_error")
            else:
                self._send(200, rule["response"])  # type: ignore[index]

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
