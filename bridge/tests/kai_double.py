"""FakeKoboldAI: a TEST DOUBLE of KoboldAI's REST API, for the bridge's tests. Not KoboldAI.

It answers the calls the bridge makes (model name, the two limits, generate) with deterministic
text derived from the prompt (`fake_text`), and can be told at run time to misbehave the way a
real KoboldAI does: be slow, answer 503 (busy) for the next k calls, answer 422 (refused
payload), answer 500, pretend to be some other web server, or die and come back.

In a test, use it in-process:

    with FakeKoboldAI(delay=0.2) as kai:
        kai.busy_next = 2
        ... KoboldClient(kai.url) ...

or as a real process (end-to-end tests): `python -m bridge.tests.kai_double --port 5000`, and
steer it with `POST /_double/control` (JSON: any of the attributes below, or `"die_for": s`)
and read counters from `GET /_double/state`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Attributes that the control endpoint may change.
CONTROLLABLE = (
    "model",
    "max_length",
    "max_context_length",
    "delay",
    "tokens",
    "busy_next",
    "refuse_next",
    "fail_next",
    "max_concurrent",
    "not_kobold",
)


def fake_text(prompt: str, tokens: int = 16) -> str:
    """The double's answer to `prompt`: exactly 4 × `tokens` characters (so the cluster counts
    exactly `tokens` tokens), derived from the prompt's SHA-256 so tests can predict it."""
    digest = hashlib.sha256(prompt.encode()).hexdigest()
    unit = " " + digest[:15]  # 16 characters: four tokens
    return (unit * (tokens // 4 + 1))[: 4 * tokens]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], double: FakeKoboldAI) -> None:
        self.double = double
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Remembered so that die() can cut idle keep-alive connections too, as a crash would.
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the servers KoboldAI runs on
    # Headers and body leave in two writes; with Nagle's algorithm and the client's delayed
    # ACK each answer would wait ~40 ms, which would show up as a slow KoboldAI.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read counters, not access logs

    def do_GET(self) -> None:
        self.server.double._handle(self, "GET")

    def do_POST(self) -> None:
        self.server.double._handle(self, "POST")

    def do_PUT(self) -> None:
        self.server.double._handle(self, "PUT")

    def send_json(self, status: int, data: Any) -> None:
        self.send_body(status, json.dumps(data).encode(), "application/json")

    def send_body(self, status: int, body: bytes, content_type: str) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            self.close_connection = True  # the client (or die()) already closed it

    def drop(self) -> None:
        """Close the connection without an answer, as a crashed server would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class FakeKoboldAI:
    """The test double. Attributes may be changed while it runs (they are read per request)."""

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        model: str = "KoboldAI_FakeModel-1B",
        max_length: int = 512,
        max_context_length: int = 2048,
        delay: float = 0.0,
        tokens: int = 16,
    ) -> None:
        self.host = host
        self.port = port
        self.model = model
        self.max_length = max_length
        self.max_context_length = max_context_length
        self.delay = delay  # seconds each generate takes
        self.tokens = tokens  # length of each answer, capped by the job's max_length
        self.busy_next = 0  # answer 503 to this many next generate calls
        self.refuse_next = 0  # answer 422 to this many next generate calls
        self.fail_next = 0  # answer 500 to this many next generate calls
        self.max_concurrent: int | None = None  # more generations at once than this: 503
        self.not_kobold = False  # answer everything with an HTML 404, like another web server
        self.generate_calls = 0  # every generate request received
        self.generated = 0  # generate requests answered with a text
        self.payloads: list[dict[str, Any]] = []  # bodies of generate requests, in order
        self._lock = threading.Lock()
        self._active = 0
        self._dying = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self._server is not None

    def start(self) -> FakeKoboldAI:
        """Listen (again, on the same port after die()) and serve in a background thread."""
        self._dying.clear()
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def die(self) -> None:
        """Stop listening and cut every connection, including generations in progress."""
        server, self._server = self._server, None
        if server is None:
            return
        # Stop listening first, so that whoever sees a cut connection next finds the port
        # closed, as after a real crash.
        server.shutdown()
        server.server_close()
        self._dying.set()
        with server.connections_lock:
            for connection in list(server.connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    revive = start
    stop = die

    def __enter__(self) -> FakeKoboldAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.die()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                **{name: getattr(self, name) for name in CONTROLLABLE},
                "generate_calls": self.generate_calls,
                "generated": self.generated,
                "active": self._active,
                "last_payload": self.payloads[-1] if self.payloads else None,
            }

    def _handle(self, request: _Handler, method: str) -> None:
        path = request.path.split("?")[0].rstrip("/")
        if self._dying.is_set():
            request.drop()
            return
        if path.startswith("/_double/"):
            self._control(request, method, path)
        elif self.not_kobold:
            request.send_body(404, b"<html><body>Not Found</body></html>", "text/html")
        elif method == "POST" and path in ("/api/latest/generate", "/api/v1/generate"):
            self._generate(request)
        elif method == "GET":
            self._info(request, path)
        else:
            if method == "POST":  # read the body: the connection is kept alive
                request.rfile.read(int(request.headers.get("Content-Length") or 0))
            request.send_json(405, {"detail": "Method Not Allowed"})

    def _info(self, request: _Handler, path: str) -> None:
        tail = path.removeprefix("/api/latest").removeprefix("/api/v1")
        answers = {
            "/model": {"result": self.model},
            "/config/max_length": {"value": self.max_length},
            "/config/max_context_length": {"value": self.max_context_length},
            "/info/version": {"result": "1.2.5"},
        }
        if tail in answers and path != tail:
            request.send_json(200, answers[tail])
        else:
            request.send_json(404, {"detail": "Not Found"})

    def _generate(self, request: _Handler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        try:
            body = json.loads(request.rfile.read(length) or b"null")
        except ValueError:
            body = None
        with self._lock:
            self.generate_calls += 1
            if isinstance(body, dict):
                self.payloads.append(body)
            verdict = self._verdict(body)
            if verdict is None:
                self._active += 1
        if verdict is not None:
            request.send_json(*verdict)
            return
        try:
            # Wakes early if die() is called, so a "crash" cuts a slow generation short.
            if self._dying.wait(self.delay):
                request.drop()
                return
            assert isinstance(body, dict)
            text = fake_text(body["prompt"], min(self.tokens, body.get("max_length", 80)))
            with self._lock:
                self.generated += 1
            request.send_json(200, {"results": [{"text": text}]})
        finally:
            with self._lock:
                self._active -= 1

    def context_limit(self) -> int | None:
        """The largest max_context_length a generate call may ask for (KoboldAI United
        refuses more than its configured context); None: any (it is clamped)."""
        return self.max_context_length

    def _verdict(self, body: Any) -> tuple[int, Any] | None:
        """An error answer for this generate call, or None to generate. Called under the lock."""
        busy = {"msg": "Server is busy; please try again later.", "type": "service_unavailable"}
        if self.busy_next > 0:
            self.busy_next -= 1
            return 503, {"detail": busy}
        if self.max_concurrent is not None and self._active >= self.max_concurrent:
            return 503, {"detail": busy}
        if self.refuse_next > 0:
            self.refuse_next -= 1
            return 422, {"detail": {"temperature": ["Must be greater than 0."]}}
        if self.fail_next > 0:
            self.fail_next -= 1
            return 500, {"detail": "Internal Server Error"}
        errors = _validate(body, self.max_length, self.context_limit())
        if errors:
            return 422, {"detail": errors}
        return None

    def _control(self, request: _Handler, method: str, path: str) -> None:
        if method == "GET" and path == "/_double/state":
            request.send_json(200, self.state())
            return
        if method != "POST" or path != "/_double/control":
            request.send_json(404, {"detail": "Not Found"})
            return
        length = int(request.headers.get("Content-Length") or 0)
        changes = json.loads(request.rfile.read(length) or b"{}")
        unknown = set(changes) - set(CONTROLLABLE) - {"die_for"}
        if unknown:
            request.send_json(400, {"detail": f"unknown settings: {sorted(unknown)}"})
            return
        with self._lock:
            for name in CONTROLLABLE:
                if name in changes:
                    setattr(self, name, changes[name])
        request.send_json(200, self.state())
        if "die_for" in changes:
            # From another thread: die() waits for serve_forever, which this request is not in,
            # but the answer above must leave before the connections are cut.
            threading.Thread(target=self._die_for, args=(float(changes["die_for"]),)).start()

    def _die_for(self, seconds: float) -> None:
        time.sleep(0.05)
        self.die()
        time.sleep(seconds)
        self.start()


def _validate(body: Any, max_length: int, max_context_length: int | None) -> dict[str, list[str]]:
    """The checks KoboldAI United makes that a cluster payload could fail."""
    if not isinstance(body, dict):
        return {"_schema": ["Invalid input type."]}
    errors: dict[str, list[str]] = {}
    if not isinstance(body.get("prompt"), str):
        errors["prompt"] = ["Missing data for required field."]
    length = body.get("max_length", 80)
    if not isinstance(length, int) or not 1 <= length <= max_length:
        errors["max_length"] = [f"Must be greater than or equal to 1 and at most {max_length}."]
    context = body.get("max_context_length", max_context_length or 1)
    if not isinstance(context, int) or not 1 <= context <= (max_context_length or context):
        errors["max_context_length"] = [f"Must be at most {max_context_length}."]
    temperature = body.get("temperature", 0.5)
    if not isinstance(temperature, int | float) or temperature <= 0:
        errors["temperature"] = ["Must be greater than 0."]
    return errors


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bridge.tests.kai_double",
        description="Run FakeKoboldAI, a test double of KoboldAI's API, until interrupted.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5000, help="0 picks a free port")
    parser.add_argument("--model", default="KoboldAI_FakeModel-1B")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--max-context-length", type=int, default=2048)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per generation")
    parser.add_argument("--tokens", type=int, default=16, help="tokens per answer")
    args = parser.parse_args(argv)
    double = FakeKoboldAI(
        args.port,
        host=args.host,
        model=args.model,
        max_length=args.max_length,
        max_context_length=args.max_context_length,
        delay=args.delay,
        tokens=args.tokens,
    ).start()
    print(f"FakeKoboldAI listening on {double.url}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stopped.set())
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    while not stopped.wait(0.2):
        pass
    double.die()
    sys.exit(0)


if __name__ == "__main__":
    main()
