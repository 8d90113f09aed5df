"""ScriptedCluster: a TEST DOUBLE of the cluster's worker API, for testing the bridge without
Django: the original API (`/generate/pop`, `/generate/submit`) and the AI Horde v2 text API
(`/api/v2/generate/text/pop`, `/api/v2/generate/text/submit`, shaped as research/horde-v2-
text-api.md §2.3 and §2.4 say). Not the cluster: it knows nothing of accounts, queues or the
ledger.

Each request gets the next scripted answer from `answers` if there is one; otherwise the double
behaves like a tiny honest cluster: pop hands out `jobs` in order (then "no work"), submit stores
the text and pays `ceil(len / 4)` tokens, and a second submit of the same job gets the contract's
400 "already submitted". On v2, pop needs an `apikey` header (the anonymous key gets 403
`AnonForbiddenWorker`), answers every key of the pop object with or without a job, and hands out
`messages`; a submit with `state: faulted` is recorded in `faulted` and paid 0; the reward is a
JSON float, as the horde's kudos are.

Long-poll (both APIs): with `hold_pops` set, a pop that asks for `"wait"` and finds no job is
held until a job is added or the wait runs out, then answered as an ordinary pop; `held_now`
and `max_held` count the pops held at once. With `refuse_wait` set, a pop with `"wait"` gets
the 400 a cluster that does not know the field answers (`errors.wait`), as the lead's cluster
does for a value out of range. Without either, `"wait"` is ignored, as the AI Horde does.

Progress (both APIs, `/generate/progress` and `/api/v2/generate/text/progress`): unknown
paths by default (404 `NotFound`, as on the AI Horde); with `accept_progress` set, each post
is recorded in `progress` as (job id, text or None for a heartbeat, time.monotonic()) and
answered 200; with
`progress_gone` set, answered 404 `InvalidJobID` (the job is no longer wanted).
"""

from __future__ import annotations

import json
import math
import threading
import time
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
        self.faulted: list[str] = []  # v2: job ids given back with state "faulted"
        self.messages: list[dict[str, Any]] = []  # v2: moderator messages sent with every pop
        self.accept_progress = False
        self.progress_gone = False
        self.progress: list[tuple[str, str | None, float]] = []
        self.hold_pops = False
        self.refuse_wait = False
        self.held_now = 0
        self.max_held = 0
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)  # a job was added, or the double stops
        self._closing = False
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> ScriptedCluster:
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self.changed:
            self._closing = True
            self.changed.notify_all()
        self.shutdown()
        self.server_close()

    def add_job(self, job_id: str, prompt: str, ttl: int = 150, **params: Any) -> None:
        payload = {"prompt": prompt, "n": 1, "max_length": 16, "max_context_length": 1024}
        with self.changed:
            self.jobs.append({"id": job_id, "payload": {**payload, **params}, "ttl": ttl})
            self.changed.notify_all()

    def answer(self, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        with self.lock:
            self.requests.append((path, headers, body))
            if self.answers:
                return self.answers.popleft()
            if path in (V2_POP, "/generate/pop") and isinstance(body, dict) and "wait" in body:
                if self.refuse_wait:
                    return 400, {
                        "message": "Input payload validation failed",
                        "rc": "ValidationError",
                        "errors": {"wait": "Unknown field."},
                    }
                if self.hold_pops and not self.jobs:
                    self._hold(float(body["wait"]))
            if path in (V2_PROGRESS, "/generate/progress") and self.progress_gone:
                return 404, {"message": "Processing Generation not found.", "rc": "InvalidJobID"}
            if path in (V2_PROGRESS, "/generate/progress") and self.accept_progress:
                self.progress.append((body["id"], body.get("text"), time.monotonic()))
                return 200, {}
            if path == V2_POP:
                return self._v2_pop(headers, body)
            if path == V2_SUBMIT:
                return self._v2_submit(body)
            if path == "/generate/pop":
                return 200, self.jobs.popleft() if self.jobs else {"id": None, "skipped": {}}
            if path == "/generate/submit":
                if body["id"] in self.submitted:
                    return 400, {"message": "This job was already submitted.", "rc": "Dup"}
                self.submitted[body["id"]] = body
                text = body.get("generation", "")
                return 200, {"reward": math.ceil(len(text) / 4)}
        return 404, {"message": "Not found.", "rc": "NotFound"}

    def _hold(self, seconds: float) -> None:
        """Wait (the lock released) until a job is added or `seconds` pass. Under the lock."""
        self.held_now += 1
        self.max_held = max(self.max_held, self.held_now)
        try:
            self.changed.wait_for(lambda: self.jobs or self._closing, timeout=seconds)
        finally:
            self.held_now -= 1

    def _v2_pop(self, headers: dict[str, str], body: Any) -> tuple[int, Any]:
        key = {name.lower(): value for name, value in headers.items()}.get("apikey")
        if not key:
            return 401, {"message": "No user matching sent API Key.", "rc": "InvalidAPIKey"}
        if key == "0000000000":
            return 403, {"message": "Anonymous user is forbidden.", "rc": "AnonForbiddenWorker"}
        answer: dict[str, Any] = {
            "payload": dict(V2_EMPTY_PAYLOAD),
            "id": None,
            "ids": [],
            "messages": list(self.messages),
            "ttl": None,
            "extra_source_images": None,
            "skipped": {},
            "softprompt": None,
            "model": None,
        }
        if self.jobs:
            job = self.jobs.popleft()
            answer.update(
                payload={**V2_EMPTY_PAYLOAD, **job["payload"]},
                id=job["id"],
                ids=[job["id"]],
                ttl=job["ttl"],
                model=body["models"][0],
            )
        return 200, answer

    def _v2_submit(self, body: Any) -> tuple[int, Any]:
        job_id = body["id"]
        if job_id in self.submitted:
            return 400, {
                "message": f"Processing Generation with ID {job_id} already submitted.",
                "rc": "DuplicateGen",
            }
        if body.get("state") == "faulted":
            self.faulted.append(job_id)
            return 200, {"reward": 0}
        self.submitted[job_id] = body
        return 200, {"reward": float(math.ceil(len(body.get("generation", "")) / 4))}


V2_POP = "/api/v2/generate/text/pop"
V2_SUBMIT = "/api/v2/generate/text/submit"
V2_PROGRESS = "/api/v2/generate/text/progress"
# The keys a v2 pop's payload always has, with the horde's defaults (research §2.3).
V2_EMPTY_PAYLOAD = {
    "min_p": 0.0,
    "smoothing_factor": 0.0,
    "dynatemp_range": 0.0,
    "dynatemp_exponent": 1.0,
    "max_context_length": 2048,
    "max_length": 80,
}


class _Handler(BaseHTTPRequestHandler):
    server: ScriptedCluster

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        # The path as sent: http.server turns a leading "//" into "/", which would hide the
        # legacy bridge's "//api/v2/..." from the tests.
        path = self.requestline.split()[1]
        status, answer = self.server.answer(path, dict(self.headers), body)
        data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass
