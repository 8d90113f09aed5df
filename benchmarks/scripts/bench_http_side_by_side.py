#!/usr/bin/env python3
"""The serving layer's cost, before and after a change, measured side by side.

    .venv/bin/python benchmarks/scripts/bench_http_side_by_side.py before=/tmp/old-checkout after=.

`manage.py benchmark --http` measures one web server after the other; on a machine that other
work loads, its figures move more between runs minutes apart than a change of a tenth of a
millisecond per request. Here every LABEL=CHECKOUT's web server (its scripts/web.sh, one
worker, access log off, metrics in files, as the benchmark starts it) runs at once, each on
its own copy of one freshly migrated SQLite database, and the benchmark's requests through
HTTP (benchmarks/through_http.py: create, pop, submit, status, idle pop over one
kept-alive connection) go to them in alternating batches, so that the load falls on each
alike. Prints, per server, the web server's CPU per request of each kind and per thread of
its worker (`/proc/<pid>/task/<tid>/schedstat`: the server's own threads, the
event loop, the sync thread). docs/benchmarks.md, "Through HTTP". Never part of the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
PYTHON = str(ROOT / ".venv" / "bin" / "python")
PASSWORD = "bench-password"
ROUNDS_PER_TURN = 50


def prepared_database(folder: str) -> tuple[str, str]:
    """A migrated SQLite database with a client account (its API key), made by this checkout."""
    path = os.path.join(folder, "template.sqlite3")
    os.environ["DATABASE_URL"] = f"sqlite:///{path}"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "koboldcluster.settings")
    manage = [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"]
    subprocess.run(manage, cwd=ROOT, check=True)
    import django

    django.setup()
    from django.db import connection

    from accounts.keys import account_register

    client, key = account_register(username="bench-client")
    client.concurrency = 10**6
    client.save(update_fields=["concurrency"])
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()
    return path, key


def start(label: str, checkout: str, template: str, folder: str) -> dict[str, Any]:
    from koboldcluster.testing import free_port

    database = os.path.join(folder, f"{label}.sqlite3")
    shutil.copy(template, database)
    metrics = tempfile.mkdtemp(prefix=f"{label}-metrics-", dir=folder)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_WORKERS": "1",
        "WEB_ACCESS_LOG": "off",
        "KOBOLDCLUSTER_RATE_LIMITS": "off",
        "PROMETHEUS_MULTIPROC_DIR": metrics,
        "KOBOLDCLUSTER_PYTHON": PYTHON,
        # Its own rate-limit counts, wake-up sockets and transient files: no cross-talk.
        "KOBOLDCLUSTER_COUNTERS_FILE": os.path.join(folder, f"{label}-counters.sqlite3"),
        "KOBOLDCLUSTER_WAKEUP_SOCKET_DIR": tempfile.mkdtemp(prefix=f"{label}-wake-", dir=folder),
        "KOBOLDCLUSTER_TRANSIENT_DIR": tempfile.mkdtemp(prefix=f"{label}-tmp-", dir=folder),
    }
    log = open(os.path.join(folder, f"{label}.log"), "w")  # noqa: SIM115 - lives as long as the server
    command = ["bash", str(Path(checkout).resolve() / "scripts" / "web.sh")]
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    return {"label": label, "process": process, "url": f"http://127.0.0.1:{port}", "threads": {}}


def wait_answering(server: dict[str, Any], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            requests.get(server["url"] + "/readyz", timeout=5)  # any answer: it serves
            return
        except requests.RequestException:
            if time.monotonic() > deadline or server["process"].poll() is not None:
                raise SystemExit(f"{server['label']}: the web server did not start") from None
            time.sleep(0.2)


def thread_cpu(pids: list[int]) -> dict[str, int]:
    """Nanoseconds on the CPU so far of every thread of `pids`, by name and thread id."""
    found = {}
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                runtime = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0]
            except OSError:
                continue  # ended meanwhile
            found[f"{name} {tid}"] = int(runtime)
    return found


def measure_side_by_side(servers: list[dict[str, Any]], rounds: int, key: str) -> None:
    from benchmarks.through_http import HttpDriver, measure

    server = {"username": "bench-owner", "password": PASSWORD, "name": "bench-server"}
    server |= {"model": "bench-model", "max_length": 512, "max_content_length": 4096}
    idle = {**server, "name": "bench-idle", "max_content_length": 100}
    for each in servers:
        pgid = each["process"].pid
        each["pids"] = [int(p) for p in subprocess.check_output(["pgrep", "-g", str(pgid)]).split()]
        each["driver"] = HttpDriver(each["url"], pgid)
        measure(each["driver"], 100, key=key, server=server, idle=idle, password=PASSWORD)
        each["driver"].cpu.clear()  # warmed up: imports, caches, the first rows
        each["driver"].counts.clear()
    for turn in range(0, rounds, ROUNDS_PER_TURN):
        for each in servers if turn // ROUNDS_PER_TURN % 2 == 0 else servers[::-1]:
            before = thread_cpu(each["pids"])
            count = min(ROUNDS_PER_TURN, rounds - turn)
            measure(each["driver"], count, key=key, server=server, idle=idle, password=PASSWORD)
            for name, runtime in thread_cpu(each["pids"]).items():
                spent = runtime - before.get(name, 0)
                each["threads"][name] = each["threads"].get(name, 0) + spent


def report(servers: list[dict[str, Any]]) -> None:
    for each in servers:
        per_request = each["driver"].per_request_ms()
        requests_sent = sum(each["driver"].counts.values())
        generation = sum(per_request[kind] for kind in ("create", "pop", "submit"))
        threads = {
            name: round(spent / requests_sent / 1e6, 3)
            for name, spent in each["threads"].items()
            if spent > 1e6
        }
        line = {"server": each["label"], **{k: round(v, 3) for k, v in per_request.items()}}
        line |= {"generation": round(generation, 3), "threads_ms_per_request": threads}
        print(json.dumps(line))
    print(json.dumps({"load_average": os.getloadavg()}))


def stop(process: subprocess.Popen) -> None:
    """Stop the server's process group (the server's master and workers)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("servers", nargs="+", metavar="LABEL=CHECKOUT")
    parser.add_argument("--rounds", type=int, default=800, help="Rounds per server.")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="bench-side-by-side-")
    servers: list[dict[str, Any]] = []
    try:
        template, key = prepared_database(folder)
        for spec in args.servers:
            label, _, checkout = spec.partition("=")
            servers.append(start(label, checkout or ".", template, folder))
        for each in servers:
            wait_answering(each)
        measure_side_by_side(servers, args.rounds, key)
        report(servers)
    finally:
        for each in servers:
            stop(each["process"])
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
