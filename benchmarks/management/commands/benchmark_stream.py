"""`manage.py benchmark_stream`: how much later a streamed token reaches the client than it
left the backend (issue 12), with many streams at once.

On a throwaway test database it starts the web server as `./run.sh` does (WEB_WORKERS
processes), the KoboldCpp test double (a token every 50 ms) in this process, and the bridge of
this repository with `--streams` threads. Then, `--rounds` times, `--streams` clients open
`POST /api/extra/generate/stream` at once, each with its own prompt. Per stream: the time its
first token arrived at the client minus the time the double wrote it (one clock: both are in
this process).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import requests
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.test.utils import setup_databases, teardown_databases

from bridge.tests.backend_doubles import FakeKoboldCpp
from bridge.tests.processes import start_bridge

PASSWORD = "bench-pass"
TOKENS = 40


class TimedKoboldCpp(FakeKoboldCpp):
    """The KoboldCpp double, noting when it writes each stream's first token."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.first_token: dict[str, float] = {}

    def _validated(self, request: Any) -> dict[str, Any] | None:
        body = super()._validated(request)
        if body is not None:
            request.wfile = _Timed(request.wfile, body["prompt"], self.first_token)
        return body


class _Timed:
    def __init__(self, real: Any, prompt: str, first: dict[str, float]) -> None:
        self.real, self.prompt, self.first = real, prompt, first

    def write(self, data: bytes) -> int:
        if data.startswith(b"event: message") and self.prompt not in self.first:
            self.first[self.prompt] = time.monotonic()
        return self.real.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class Command(BaseCommand):
    help = "Measure the time to first token at the client minus at the backend, many streams."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--streams", type=int, default=20, help="Concurrent streams.")
        parser.add_argument("--rounds", type=int, default=3)
        parser.add_argument("--workers", default="2", help="Web processes (WEB_WORKERS).")

    def handle(self, *args: Any, streams: int, rounds: int, workers: str, **opts: Any) -> None:
        from koboldcluster.testing import ClusterProcess

        self.stdout.write(f"Stream benchmark on {connection.vendor}, {workers} workers")
        old_config = setup_databases(verbosity=0, interactive=False)
        web = ClusterProcess(
            {"WEB_WORKERS": workers, "LOG_LEVEL": "WARNING", "WEB_ACCESS_LOG": "off"}
        )
        bridge = None
        try:
            with TimedKoboldCpp(tokens=TOKENS) as backend, tempfile.TemporaryDirectory() as tmp:
                web.start()
                bridge = start_bridge(
                    Path(tmp),
                    *("--cluster-url", web.url, "--backend-url", backend.url),
                    *("--name", "bench-gpu", "--username", "bench", "--password", PASSWORD),
                    *("--threads", str(streams)),
                    BRIDGE_INTERVAL="0.1",
                )
                _wait_checked_in(web.url)
                lags: list[float] = []
                for round_number in range(rounds):
                    lags += self._round(web.url, backend, streams, round_number)
                millis = sorted(1000 * lag for lag in lags)
                p99 = millis[int(0.99 * (len(millis) - 1))]
                self.stdout.write(
                    f"  {streams} concurrent streams, first token at the client minus at the "
                    f"backend: mean {statistics.mean(millis):.1f} ms, p50 "
                    f"{statistics.median(millis):.1f} ms, p99 {p99:.1f} ms, "
                    f"max {millis[-1]:.1f} ms ({len(millis)} streams)"
                )
        finally:
            if bridge is not None:
                bridge.stop()
            web.stop()
            teardown_databases(old_config, verbosity=0)

    def _round(self, url: str, backend: TimedKoboldCpp, streams: int, number: int) -> list[float]:
        arrived: dict[str, float] = {}
        texts: dict[str, str] = {}

        def reader(prompt: str) -> None:
            body = {"prompt": prompt, "max_length": TOKENS}
            text = ""
            with requests.post(
                f"{url}/api/extra/generate/stream", json=body, stream=True, timeout=120
            ) as response:
                for line in response.iter_lines(decode_unicode=True):
                    if line.startswith("data:"):
                        token = json.loads(line[5:])["token"]
                        if token and prompt not in arrived:
                            arrived[prompt] = time.monotonic()
                        text += token
            texts[prompt] = text

        prompts = [f"Benchmark round {number} stream {index}" for index in range(streams)]
        threads = [threading.Thread(target=reader, args=(p,)) for p in prompts]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        lags = []
        for prompt in prompts:
            if prompt in arrived and prompt in backend.first_token:
                lags.append(arrived[prompt] - backend.first_token[prompt])
            else:
                self.stdout.write(f"  (a stream got no token: {prompt!r})")
        return lags


def _wait_checked_in(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if requests.get(f"{url}/servers", timeout=10).json():
            return
        time.sleep(0.2)
    raise RuntimeError("the bridge did not check in")
