"""The test suite's cluster process: it waits for readiness, however slow the machine."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from koboldcluster.testing import (
    ClusterProcess,
    ClusterStartError,
    ManagedProcess,
    started,
    wait_until,
)


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
            time.sleep(3.0)  # past the probe's timeout
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
    process.probe_timeout = 1.0
    process.running = lambda: True  # the double stands in for the process
    try:
        yield process, handler
    finally:
        server.shutdown()
        server.server_close()


def test_every_transient_failure_is_retried(flaky_cluster):
    process, double = flaky_cluster
    double.script = ["reset", 500, 503, "slow", 502]

    process.wait_ready(timeout=60)

    # A loaded machine may make a quick answer miss the probe's timeout too: more 200s then.
    assert double.calls[:5] == ["reset", 500, 503, "slow", 502]
    assert set(double.calls[5:]) == {200}


def test_a_start_that_never_gets_ready_fails_saying_why(flaky_cluster):
    process, double = flaky_cluster
    double.script = [503] * 1000

    started = time.monotonic()
    with pytest.raises(ClusterStartError) as failure:
        process.wait_ready(timeout=3)

    assert time.monotonic() - started < 15
    assert "was not ready after 3 s" in str(failure.value)
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
    try:
        ManagedProcess.start(process)  # launched, not waited for
        # However slow the machine is to boot it, it answers 503 once it is up.
        wait_until(
            lambda: probe(process.url) == 503, timeout=120, interval=0.2, what="a 503 /readyz"
        )
        with pytest.raises(ClusterStartError) as failure:
            process.wait_ready(timeout=2)
    finally:
        process.stop()

    message = str(failure.value)
    assert "was not ready after 2 s" in message
    # migrations fails, and the checks after it are skipped (failed too).
    assert '"failed":["migrations"' in message.replace(" ", "")
    assert message.split("Its output:\n", 1)[1].strip()  # the server's own log


def probe(url: str) -> int | None:
    try:
        return requests.get(f"{url}/readyz", timeout=5).status_code
    except requests.RequestException:
        return None


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


class NeverStarts(ManagedProcess):
    """A process whose start fails after it was launched (as a cluster that never gets ready)."""

    def __init__(self) -> None:
        super().__init__([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))

    def start(self) -> None:
        super().start()
        raise ClusterStartError("not ready")


def sleeper() -> ManagedProcess:
    return ManagedProcess([sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))


def test_a_failed_start_stops_the_processes_already_started():
    first, second = sleeper(), NeverStarts()

    with pytest.raises(ClusterStartError), started(first, second):
        pytest.fail("the body must not run")

    assert first.process is None and second.process is None
    wait_until(lambda: group_is_gone(first.pgid) and group_is_gone(second.pgid), timeout=10)


def test_a_failing_test_body_stops_its_processes():
    process = sleeper()

    with pytest.raises(RuntimeError), started(process):
        raise RuntimeError("the test failed")

    wait_until(lambda: group_is_gone(process.pgid), timeout=10)


def test_children_left_behind_by_an_exited_leader_are_stopped_too(tmp_path):
    """A web server's master that died leaves its workers in the group: stop() ends them."""
    pidfile = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, pathlib; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
        f"pathlib.Path({str(pidfile)!r}).write_text(str(child.pid))"
    )
    process = ManagedProcess([sys.executable, "-c", script], dict(os.environ))
    process.start()
    wait_until(lambda: pidfile.exists() and pidfile.read_text(), timeout=30)
    process.process.wait(timeout=30)  # the leader has exited; its child lives on

    process.stop()

    wait_until(lambda: group_is_gone(process.pgid), timeout=10, what="the orphaned child to end")


@pytest.mark.e2e
def test_a_cluster_whose_start_fails_leaves_no_process(tmp_path):
    process = ClusterProcess({"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}"})
    process.start_timeout = 5

    with pytest.raises(ClusterStartError):
        process.start()

    wait_until(lambda: group_is_gone(process.pgid), timeout=10, what="gunicorn's group to end")
