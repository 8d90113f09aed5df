#!/usr/bin/env python3
"""What one web node holds: thousands of long-polling volunteers and hundreds of open streams.

Starts the web server as ./run.sh does (scripts/web.sh, WEB_WORKERS processes) on a fresh
SQLite database in a temporary folder (or `--database-url`), then drives it with
benchmarks/scripts/load.py through real HTTP connections, and reads the server's processes from
/proc:

1. started, no connections: CPU over `--idle-seconds`, memory, open files;
2. `--volunteers` servers long-polling (`wait: 30`): memory and open files per waiting
   connection, CPU over `--idle-seconds` (their re-pops every 30 s included);
3. a steady trickle of `--prompts` prompts per second: CPU, dispatch latency (prompt POST →
   a waiting volunteer's pop answered);
4. the same with `--streams` open streams (served by the volunteers, a progress every 2 s):
   CPU, dispatch latency, delay of streamed tokens, errors.

Run as root or with a file-descriptor limit above twice the connections (`ulimit -n`).
Prints one line per phase and a JSON summary (`--json`). Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import requests

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks import procstat  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")
# Load-test settings: no rate limits, and room for every prompt and stream of the load
# (they come without API keys, from one address).
LOAD_ENV = {
    "KOBOLDCLUSTER_RATE_LIMITS": "off",
    "KOBOLDCLUSTER_CONCURRENCY_ANONYMOUS": "100000",
    "KOBOLDCLUSTER_CONCURRENCY_PER_CLIENT": "100000",
    "KOBOLDCLUSTER_MAX_N_ANONYMOUS": "100",
}
WAITERS = re.compile(r"^koboldcluster_long_poll_waiters\S* (\S+)$", re.MULTILINE)


def metric_waiters(url: str) -> float | None:
    """Pops waiting now in every web process of the node (its /metrics adds them up); None
    when /metrics is not answered within 10 s (a node that takes no more requests)."""
    try:
        text = requests.get(f"{url}/metrics", timeout=10).text
    except requests.RequestException:
        return None
    return sum(float(value) for value in WAITERS.findall(text))


class Node:
    """The web server as ./run.sh starts it, on its own database and var folder."""

    def __init__(self, port: int, workers: int, database_url: str | None, folder: str) -> None:
        self.url = f"http://127.0.0.1:{port}"
        var = Path(folder)
        self.env = {
            **os.environ,
            **LOAD_ENV,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "WEB_WORKERS": str(workers),
            "KOBOLDCLUSTER_VAR_DIR": str(var),
            "DATABASE_URL": database_url or f"sqlite:///{var / 'db.sqlite3'}",
            "PROMETHEUS_MULTIPROC_DIR": str(var / "prometheus"),
            "PYTHONUNBUFFERED": "1",
        }
        self.log: IO[str] = open(var / "web.log", "w")  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        manage = [PYTHON, "manage.py", "migrate", "--noinput", "-v", "0"]
        subprocess.run(manage, cwd=ROOT, env=self.env, check=True)
        self.process = subprocess.Popen(
            ["scripts/web.sh"], cwd=ROOT, env=self.env, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"the web server did not start; see {self.log.name}")

    def usage(self) -> procstat.Usage:
        return procstat.group_usage(self.process.pid)

    def stop(self) -> None:
        if self.process is not None:
            with _quiet():
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            with _quiet():
                os.killpg(self.process.pid, signal.SIGKILL)
        self.log.close()


class _quiet:  # noqa: N801 - a tiny context manager, used like contextlib.suppress
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, *rest: Any) -> bool:
        return kind is not None and issubclass(kind, ProcessLookupError)


def start_load(url: str, *args: str) -> subprocess.Popen:
    command = [
        PYTHON,
        str(ROOT / "benchmarks" / "scripts" / "load.py"),
        "--url",
        url,
        "--duration",
        "3600",
        *args,
    ]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True, start_new_session=True)


def wait_event(load: subprocess.Popen, event: str) -> dict[str, Any]:
    for line in load.stdout:
        found = json.loads(line)
        if found.get("event") == event:
            return found
    raise RuntimeError(f"the load process ended before {event!r}")


def finish_load(load: subprocess.Popen) -> dict[str, Any]:
    load.send_signal(signal.SIGTERM)
    found = wait_event(load, "results")
    load.wait(timeout=60)
    return found


def cpu_over(node: Node, seconds: float) -> float:
    """Share of one core the node's processes used over `seconds`."""
    before, started = node.usage().cpu, time.monotonic()
    time.sleep(seconds)
    return (node.usage().cpu - before) / (time.monotonic() - started)


def run(args: argparse.Namespace, folder: str) -> dict[str, Any]:
    node = Node(args.port, args.workers, args.database_url, folder)
    loads: list[subprocess.Popen] = []
    report: dict[str, Any] = {"workers": args.workers, "volunteers": args.volunteers}
    try:
        node.start()
        time.sleep(2)
        empty = node.usage()
        report["empty"] = {
            "cpu_share": cpu_over(node, args.idle_seconds), **_memory(empty)
        }  # fmt: skip
        say("started, no connections", report["empty"])

        fleet = ["--volunteers", str(args.volunteers), "--hold", str(args.hold)]
        loads.append(start_load(node.url, "--ramp", str(args.ramp), *fleet, "--tag", "v"))
        wait_event(loads[0], "ready")
        started = time.monotonic()
        while (metric_waiters(node.url) or 0) < 0.99 * args.volunteers:
            if time.monotonic() - started > 120:
                break
            time.sleep(1)
        waiting = metric_waiters(node.url)
        held = node.usage()
        per = max(waiting or 0, 1)
        report["waiting"] = {
            "pops_held": waiting,
            **_memory(held),
            "kib_per_connection": round((held.resident - empty.resident) / per / 1024, 1),
            "files_per_connection": round((held.files - empty.files) / per, 2),
            "cpu_share": cpu_over(node, args.idle_seconds),
        }
        say(f"{args.volunteers} volunteers waiting", report["waiting"])

        report["prompts"] = trickle_phase(node, loads, args, streams=0)
        say(f"+ {args.prompts}/s prompts", report["prompts"])
        report["trickle"] = trickle_phase(node, loads, args, streams=args.streams)
        say(f"+ {args.prompts}/s prompts and {args.streams} streams", report["trickle"])
    finally:
        for load in loads:
            with _quiet():
                os.killpg(load.pid, signal.SIGKILL)
            load.wait()
        node.stop()
    return report


def trickle_phase(
    node: Node, loads: list[subprocess.Popen], args: argparse.Namespace, streams: int
) -> dict[str, Any]:
    """A steady trickle of prompts (and `streams` streams) for --trickle-seconds, the
    volunteers (loads[0]) serving them: CPU, memory, dispatch latency, errors."""
    clients_args = [
        "--prompts",
        str(args.prompts),
        "--streams",
        str(streams),
        "--tag",
        f"c{streams}",
    ]
    wait_event_after(loads[0], signal.SIGUSR1, "snapshot")  # the dispatch latencies start afresh
    clients = start_load(node.url, "--ramp", str(args.ramp), *clients_args)
    loads.append(clients)
    time.sleep(streams / args.ramp + 5)  # the streams are open
    busy = node.usage()
    generator_before = procstat.usage(p.pid for p in loads).cpu
    figures = {**_memory(busy), "cpu_share": cpu_over(node, args.trickle_seconds)}
    # The load generator shares the machine: its own CPU, for the record.
    used = procstat.usage(p.pid for p in loads).cpu - generator_before
    figures["load_generator_cpu_share"] = round(used / args.trickle_seconds, 3)
    posted = finish_load(loads.pop())
    served = wait_event_after(loads[0], signal.SIGUSR1, "snapshot")
    unserved = set(posted["sent_nonces"]) - set(served["served_nonces"])
    figures.update(
        dispatch_ms=served["dispatch_ms"],
        prompt_post_ms=posted["prompt_post_ms"],
        token_delay_ms=posted["token_delay_ms"],
        first_token_ms=posted["first_token_ms"],
        prompts_sent=posted["prompts_sent"],
        prompts_not_served=len(unserved),
        duplicate_jobs=served["duplicate_jobs"],
        errors={**served["errors"], **posted["errors"], **posted["stream_errors"]},
    )
    return figures


def wait_event_after(load: subprocess.Popen, sig: int, event: str) -> dict[str, Any]:
    load.send_signal(sig)
    return wait_event(load, event)


def _memory(usage: procstat.Usage) -> dict[str, Any]:
    return {"resident_mib": round(usage.resident / 2**20, 1), "files": usage.files,
            "threads": usage.threads}  # fmt: skip


def say(what: str, figures: dict[str, Any]) -> None:
    shown = {k: f"{100 * v:.2f} % of a core" if k == "cpu_share" else v for k, v in figures.items()}
    print(f"{what}: {json.dumps(shown)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volunteers", type=int, default=5000)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--prompts", type=float, default=5, help="prompts per second")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--port", type=int, default=5301)
    parser.add_argument("--ramp", type=float, default=250, help="connections opened per second")
    parser.add_argument("--hold", type=float, default=60, help="seconds a stream's job lasts")
    parser.add_argument("--idle-seconds", type=float, default=40)
    parser.add_argument("--trickle-seconds", type=float, default=40)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--json", action="store_true", help="print the whole report as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-node-") as folder:
        report = run(args, folder)
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
