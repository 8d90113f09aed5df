"""The test suite's cluster process: it waits for readiness, however slow the machine."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from koboldcluster.testing import ClusterProcess, ClusterStartError


class FlakyReadyzDouble(BaseHTTPRequestHandler):
    """A test double of a cluster that is still starting: each GET /readyz takes the next
    scripted answer ("reset", "slow", a status code), then 200 for good."""

    script: list[str | int] = []
    calls: list[str | int] = []

    def do_GET(self) -> None:
        step = self.script.pop(0) if self.script else 200
        self.calls.append(step)
        if step == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            self.close_connection = True
            return
        if step == "slow":
            time.sleep(1.0)
            step = 200
        body = b'{"status": "ready"}' if step == 200 else b'{"status": "not ready"}'
        self.send_response(int(step))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_cluster() -> Iterator[tuple[ClusterProcess, type[FlakyReadyzDouble]]]:
    handler = type("Handler", (FlakyReadyzDouble,), {"script": [], "calls": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    process = ClusterProcess(port=server.server_address[1])
    process.probe_timeout = 0.3
    process.running = lambda: True  # the double stands in for the process
    try:
        yield process, handler
    finally:
        server.shutdown()
        server.server_close()


def test_every_transient_failure_is_retried(flaky_cluster):
    process, double = flaky_cluster
    double.script = ["reset", 500, 503, "slow", 502]

    process.wait_ready(timeout=30)

    assert double.calls == ["reset", 500, 503, "slow", 502, 200]


def test_a_start_that_never_gets_ready_fails_saying_why(flaky_cluster):
    process, double = flaky_cluster
    double.script = [503] * 1000

    started = time.monotonic()
    with pytest.raises(ClusterStartError) as failure:
        process.wait_ready(timeout=1)

    assert time.monotonic() - started < 10
    assert "was not ready after 1 s" in str(failure.value)
    assert 'last answer: 503 {"status": "not ready"}' in str(failure.value)


def test_another_program_on_the_port_fails_at_once(flaky_cluster):
    process, double = flaky_cluster
    double.script = [404]

    with pytest.raises(ClusterStartError, match="answered 404"):
        process.wait_ready(timeout=60)


@pytest.mark.e2e
def test_a_cluster_without_migrations_never_gets_ready(tmp_path):
    """A real gunicorn on an empty database: the failure names the check and shows the log."""
    process = ClusterProcess({"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}"})
    process.start_timeout = 8
    try:
        with pytest.raises(ClusterStartError) as failure:
            process.start()
    finally:
        process.stop()

    message = str(failure.value)
    assert "was not ready after 8 s" in message
    assert '"failed":["migrations"]' in message.replace(" ", "")
    assert message.split("Its output:\n", 1)[1].strip()  # the server's own log
