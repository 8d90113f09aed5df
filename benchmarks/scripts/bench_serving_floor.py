#!/usr/bin/env python3
"""What the serving layer alone costs per request: the floor under `manage.py benchmark --http`.

    .venv/bin/python benchmarks/scripts/bench_serving_floor.py [--requests 4000] [--repeat 3]

It starts `scripts/web.sh` (uvicorn with the cluster's flags, one worker, access log off)
serving `benchmarks/floor_app.py`, an application that reads the body and answers a small JSON
object without doing anything else, and sends it GETs and POSTs of the benchmark's size over
one kept-alive connection (benchmarks/through_http.py's way), reading the web server's CPU
from /proc. Subtracted from a request's cost through HTTP, it leaves what the cluster's own
work costs in the web server. docs/benchmarks.md, "Through HTTP". Never part of the tests'
timing: the test runs it only to see that it works.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks import procstat  # noqa: E402
from koboldcluster.testing import free_port, wait_until  # noqa: E402

BODY = {"prompt": "Hello", "params": {"max_length": 80}}


def measure(requests_per_kind: int, repeat: int) -> dict[str, float]:
    """The web server's lowest mean CPU milliseconds per GET and per POST over `repeat` runs."""
    port = free_port()
    env = {
        **os.environ,
        "WEB_APP": "benchmarks.floor_app:application",
        "WEB_WORKERS": "1",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "KOBOLDCLUSTER_PYTHON": sys.executable,
    }
    web = subprocess.Popen(
        ["scripts/web.sh"], cwd=ROOT, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    try:
        with requests.Session() as session:
            wait_until(lambda: _answers(session, url), timeout=60, what="the web server")
            best: dict[str, float] = {}
            for _ in range(repeat):
                for kind in ("GET", "POST"):
                    send = _sender(session, url, kind)
                    for _ in range(100):
                        send()  # warm
                    before = procstat.group_cpu(web.pid)
                    for _ in range(requests_per_kind):
                        send()
                    time.sleep(0.02)
                    used = 1000 * (procstat.group_cpu(web.pid) - before) / requests_per_kind
                    best[kind] = min(best.get(kind, used), used)
            return best
    finally:
        os.killpg(web.pid, signal.SIGTERM)
        try:
            web.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(web.pid, signal.SIGKILL)
            web.wait()


def _sender(session: requests.Session, url: str, kind: str):
    if kind == "GET":
        return lambda: session.get(url, timeout=10).raise_for_status()
    return lambda: session.post(url, json=BODY, timeout=10).raise_for_status()


def _answers(session: requests.Session, url: str) -> bool:
    try:
        return session.get(url, timeout=1).ok
    except requests.ConnectionError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=4000, help="Requests per kind and run.")
    parser.add_argument("--repeat", type=int, default=3, help="Runs; the lowest mean counts.")
    args = parser.parse_args()
    floor = measure(args.requests, args.repeat)
    print(json.dumps({"ms_per_request": {k: round(v, 3) for k, v in floor.items()},
                      "load_average": os.getloadavg()}))  # fmt: skip


if __name__ == "__main__":
    main()
