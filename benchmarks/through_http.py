"""`manage.py benchmark --http`: the same requests through the real web server and real HTTP.

The in-process benchmark hands requests straight to the ASGI application: everything but the
serving layer. Here the web server runs as `./run.sh` starts it (scripts/web.sh: uvicorn, its
HTTP parsing, access log, ASGI translation and thread hops all counted) on the benchmark's
throwaway database, and one client sends the requests over one kept-alive connection, as a
bridge or a client library does. The web server's CPU is read from /proc (every process of
its group: master and workers), so it is a mean per request over a batch, not a median of
single requests: /proc counts in clock ticks (10 ms), far coarser than one request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from benchmarks import procstat

BATCH = 50  # requests of one kind between two readings of the web server's CPU


class HttpDriver:
    """Requests to a running web server over one kept-alive connection, each kind measured as
    the web server's CPU over batches of BATCH requests."""

    def __init__(self, url: str, pgid: int) -> None:
        self.url = url
        self.pgid = pgid
        self.session = requests.Session()
        self.cpu: dict[str, float] = {}  # seconds of web server CPU per kind of request
        self.counts: dict[str, int] = {}

    def post(self, path: str, body: dict[str, Any], apikey: str | None = None) -> Any:
        headers = {"apikey": apikey} if apikey else {}
        response = self.session.post(f"{self.url}{path}", json=body, headers=headers, timeout=30)
        return _json(response)

    def get(self, path: str) -> Any:
        return _json(self.session.get(f"{self.url}{path}", timeout=30))

    def batch(self, name: str, items: list[Any], request: Callable[[Any], Any]) -> list[Any]:
        """Send a request `request(item)` per item; the web server's CPU meanwhile counts for
        `name`."""
        before = procstat.group_cpu(self.pgid)
        answers = [request(item) for item in items]
        time.sleep(0.02)  # let the last answer's own bookkeeping (access log) be charged
        self.cpu[name] = self.cpu.get(name, 0.0) + procstat.group_cpu(self.pgid) - before
        self.counts[name] = self.counts.get(name, 0) + len(items)
        return answers

    def per_request_ms(self) -> dict[str, float]:
        return {name: 1000 * self.cpu[name] / self.counts[name] for name in self.cpu}

    def close(self) -> None:
        self.session.close()


def _json(response: requests.Response) -> Any:
    if response.status_code not in (200, 202):
        raise RuntimeError(f"{response.request.method} {response.url}: {response.status_code}")
    return response.json()


def measure(
    driver: HttpDriver,
    rounds: int,
    *,
    key: str,
    server: dict[str, Any],
    idle: dict[str, Any],
    password: str,
) -> dict[str, float]:
    """The original API's hot requests through HTTP, in batches of each kind in the order of a
    generation: create, pop (a job), submit, status, idle pop. Mean web server CPU
    milliseconds per request of each kind."""
    ask = {"prompt": "Hello", "params": {"max_length": 80}}
    post, get = driver.post, driver.get
    done = 0
    while done < rounds:
        count = min(BATCH, rounds - done)
        created = driver.batch("create", [ask] * count, lambda a: post("/generate/prompt", a, key))
        jobs = driver.batch("pop", [server] * count, lambda s: post("/generate/pop", s))
        results = [{"id": job["id"], "password": password, "generation": "x" * 64} for job in jobs]
        driver.batch("submit", results, lambda r: post("/generate/submit", r))
        driver.batch("status", created, lambda p: get(f"/generate/prompt/{p['id']}"))
        driver.batch("idle_pop", [idle] * count, lambda s: post("/generate/pop", s))
        done += count
    return driver.per_request_ms()
