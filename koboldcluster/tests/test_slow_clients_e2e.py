"""No client can stall the server: silent and slow connections against the web server as
`./run.sh` starts it (scripts/web.sh, two worker processes). Loopback only, bounded in time.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from koboldcluster.testing import ClusterProcess

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

IDLE_CONNECTIONS = 200
SLOW_HEADER_CONNECTIONS = 50


@pytest.fixture
def web() -> Iterator[ClusterProcess]:
    process = ClusterProcess({"WEB_WORKERS": "2", "WEB_HEADER_TIMEOUT": "10"})
    try:
        process.start()
        yield process
    finally:
        process.stop()


def open_connections(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def trickle_headers(sockets: list[socket.socket], stop: threading.Event) -> None:
    """Send a request line, then one header byte per connection every half second."""
    for sock in sockets:
        sock.sendall(b"GET /servers HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    while not stop.wait(0.5):
        for sock in sockets:
            # Closed by the server: what the header timeout is for.
            with contextlib.suppress(OSError):
                sock.sendall(b"a")


def test_idle_and_slow_header_connections_leave_other_requests_fast(web):
    prompt = requests.post(
        f"{web.url}/generate/prompt",
        json={"prompt": "Hello", "params": {"n": 1}, "username": "eve"},
        timeout=10,
    ).json()["id"]
    idle = open_connections(web.port, IDLE_CONNECTIONS)
    slow = open_connections(web.port, SLOW_HEADER_CONNECTIONS)
    stop = threading.Event()
    trickler = threading.Thread(target=trickle_headers, args=(slow, stop), daemon=True)
    trickler.start()
    try:
        time.sleep(1.0)
        durations = []
        for _ in range(5):
            started = time.monotonic()
            response = requests.get(f"{web.url}/generate/prompt/{prompt}", timeout=10)
            durations.append(time.monotonic() - started)
            assert response.status_code == 200
    finally:
        stop.set()
        trickler.join(timeout=5)
        for sock in idle + slow:
            sock.close()
    assert max(durations) < 1.0, durations


@pytest.fixture
def web_short_timeout() -> Iterator[ClusterProcess]:
    process = ClusterProcess({"WEB_HEADER_TIMEOUT": "2", "WEB_HEADER_LIMIT": "4096"})
    try:
        process.start()
        yield process
    finally:
        process.stop()


def closed_within(sock: socket.socket, seconds: float, trickle: bool) -> float | None:
    """Seconds until the server closed `sock` (None if still open after `seconds`)."""
    started = time.monotonic()
    sock.settimeout(0.25)
    while time.monotonic() - started < seconds:
        try:
            if trickle:
                sock.sendall(b"a")
            if sock.recv(1024) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - started
    return None


def test_the_server_closes_connections_that_do_not_finish_their_headers(web_short_timeout):
    port = web_short_timeout.port
    silent, slow, kept_alive = open_connections(port, 3)
    slow.sendall(b"GET /servers HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    kept_alive.sendall(b"GET /api/v2/status/heartbeat HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        assert b"200 OK" in kept_alive.recv(4096)
        # WEB_HEADER_TIMEOUT=2: each is closed after about 2 s (bound: generous).
        results = {
            "silent": closed_within(silent, 10, trickle=False),
            "slow": closed_within(slow, 10, trickle=True),
            "idle keep-alive": closed_within(kept_alive, 10, trickle=False),
        }
    finally:
        for sock in (silent, slow, kept_alive):
            sock.close()
    assert all(seconds is not None for seconds in results.values()), results


def test_a_request_head_over_the_limit_is_refused_and_its_connection_closed(web_short_timeout):
    url = f"{web_short_timeout.url}/api/v2/status/heartbeat"
    assert requests.get(url, headers={"X-Big": "a" * 3000}, timeout=10).status_code == 200
    with socket.create_connection(("127.0.0.1", web_short_timeout.port), timeout=5) as sock:
        # WEB_HEADER_LIMIT=4096, sent in pieces as a client may: refused before the head ends.
        sock.sendall(b"GET /api/v2/status/heartbeat HTTP/1.1\r\nHost: x\r\n")
        for _ in range(10):
            with contextlib.suppress(OSError):  # closed by the server meanwhile
                sock.sendall(b"X-Big: " + b"a" * 1000 + b"\r\n")
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(4096):
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 400"), answer[:100]
