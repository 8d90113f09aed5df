"""ScriptedCluster: a TEST DOUBLE of the cluster's original API (pop and submit), for testing the
bridge without Django. Not the cluster: it knows nothing of accounts, queues or the ledger.

Each request gets the next scripted answer from `answers` if there is one; otherwise the double
behaves like a tiny honest cluster: pop hands out `jobs` in order (then "no work"), submit stores
the text and pays `ceil(len / 4)` tokens, and a second submit of the same job gets the contract's
400 "already submitted".
"""

from __future__ import annotations

import json
import math
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class ScriptedCluster(ThreadingHTTPServer):
    daemon_threads = True

    allow_reuse_address = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.answers: deque[tuple[int, Any]] = deque()  # (status, JSON-able or raw bytes)
        self.jobs: deque[dict[str, Any]] = deque()  # pop answers: {"id", "payload", "ttl"}
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.submitted: dict[str, dict[str, Any]] = {}  # job id -> submit body
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> ScriptedCluster:
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def add_job(self, job_id: str, prompt: str, ttl: int = 150, **params: Any) -> None:
        payload = {"prompt": prompt, "n": 1, "max_length": 16, "max_context_length": 1024}
        self.jobs.append({"id": job_id, "payload": {**payload, **params}, "ttl": ttl})

    def answer(self, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((path, headers, body))
            if self.answers:
                return self.answers.popleft()
            if path == "/generate/pop":
                return 200, self.jobs.popleft() if self.jobs else {"id": None, "skipped": {}}
            if path == "/generate/submit":
                if body["id"] in self.submitted:
                    return 400, {"message": "This job was already submitted.", "rc": "Dup"}
                self.submitted[body["id"]] = body
                text = body.get("generation", "")
                return 200, {"reward": math.ceil(len(text) / 4)}
        return 404, {"message": "Not found.", "rc": "NotFound"}


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedCluster

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        status, answer = self.server.answer(self.path, dict(self.headers), body)
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass
