"""`manage.py benchmark_dispatch`: how fast a new prompt reaches a long-polling server, and
what waiting servers cost the web server (DESIGN §7, "Dispatch").

It starts the web server as `./run.sh` does (scripts/web.sh, WEB_WORKERS processes) on a
throwaway test database (never the configured one), lets N servers long-poll it (`wait`) from
threads of this process, posts prompts one at a time and measures, per prompt, the time from
sending its POST to a waiting server holding the job. Then, with no prompts, it measures the
CPU time of the web server's processes while the servers wait idle.
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import requests
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.test.utils import setup_databases, teardown_databases

POP_WAIT = 30


class Command(BaseCommand):
    help = "Measure dispatch latency to long-polling servers and their idle CPU cost."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--servers", default="4,200", help="Comma-separated server counts.")
        parser.add_argument("--prompts", type=int, default=100, help="Prompts per count.")
        parser.add_argument(
            "--idle-seconds", type=int, default=60, help="How long to measure idle CPU for."
        )
        parser.add_argument("--workers", default="2", help="Web processes (WEB_WORKERS).")

    def handle(self, *args: Any, servers: str, prompts: int, idle_seconds: int, **opts: Any):
        counts = [int(count) for count in servers.split(",")]
        self.stdout.write(f"Dispatch benchmark on {connection.vendor}, {opts['workers']} workers")
        old_config = setup_databases(verbosity=0, interactive=False)
        try:
            for count in counts:
                self._run(count, prompts, idle_seconds if count == max(counts) else 0, opts)
        finally:
            teardown_databases(old_config, verbosity=0)

    def _run(self, count: int, prompts: int, idle_seconds: int, opts: dict[str, Any]) -> None:
        from koboldcluster.testing import ClusterProcess

        web = ClusterProcess(
            {"WEB_WORKERS": opts["workers"], "LOG_LEVEL": "WARNING", "WEB_ACCESS_LOG": "off"}
        )
        fleet = Fleet(count=count)
        try:
            web.start()
            fleet.start(web.url)
            if idle_seconds:
                self._idle(web, fleet, count, idle_seconds)
            latencies = [fleet.dispatch(index) for index in range(prompts)]
            for name, column in (("from the prompt's POST", 0), ("after its answer", 1)):
                millis = sorted(1000 * max(sample[column], 0) for sample in latencies)
                self.stdout.write(
                    f"  {count:>4} waiting servers, {name}: mean {statistics.mean(millis):.1f} "
                    f"ms, p50 {statistics.median(millis):.1f} ms, p99 {_p99(millis):.1f} ms, "
                    f"max {millis[-1]:.1f} ms ({prompts} prompts)"
                )
        finally:
            fleet.stop()
            web.stop()

    def _idle(self, web: Any, fleet: Fleet, count: int, seconds: int) -> None:
        """CPU of the web server while the servers wait with nothing to do: first between
        their pops (every server has just made its first pop and waits POP_WAIT seconds),
        then over `seconds` in all, which includes every server's re-pop(s)."""
        settle(web)
        pops_before, cpu_before = fleet.answers, process_group_cpu(web.process.pid)
        started = time.monotonic()
        # Until just before the first pops come back (POP_WAIT after they were sent).
        window = fleet.started + POP_WAIT - 2 - started
        time.sleep(max(window, 0))
        waiting = process_group_cpu(web.process.pid) - cpu_before
        between = fleet.answers - pops_before
        memory, threads = process_group_memory(web.process.pid)
        time.sleep(max(seconds - window, 0))
        used = process_group_cpu(web.process.pid) - cpu_before
        elapsed = time.monotonic() - started
        pops = fleet.answers - pops_before
        self.stdout.write(
            f"  {count:>4} servers waiting, between their pops ({between} answered in "
            f"{window:.1f} s): web server CPU {waiting:.2f} s = "
            f"{100 * waiting / max(window, 0.001):.2f} % of a core; {memory / 2**20:.0f} MB "
            f"resident, {threads} threads"
        )
        self.stdout.write(
            f"  {count:>4} servers idle for {elapsed:.0f} s, each re-popping every {POP_WAIT} s "
            f"({pops} pops, {1000 * empty_pop_cpu(web):.1f} ms CPU each alone): web server CPU "
            f"{used:.2f} s = {100 * used / elapsed:.2f} % of a core"
        )


def settle(web: Any, quiet: float = 0.05, at_most: float = 20) -> None:
    """Wait until the web server has answered the first pops (a second with little CPU)."""
    deadline = time.monotonic() + at_most
    while time.monotonic() < deadline:
        before = process_group_cpu(web.process.pid)
        time.sleep(1)
        if process_group_cpu(web.process.pid) - before < quiet:
            return


def empty_pop_cpu(web: Any, rounds: int = 100) -> float:
    """CPU seconds of the web server per empty pop without `wait`, one at a time."""
    session = requests.Session()
    body = {"username": "bench-owner", "password": "bench-pass", "model": "bench"}
    body["name"] = "bench-alone"
    session.post(f"{web.url}/generate/pop", json=body, timeout=10)
    before = process_group_cpu(web.process.pid)
    for _ in range(rounds):
        session.post(f"{web.url}/generate/pop", json=body, timeout=10)
    return (process_group_cpu(web.process.pid) - before) / rounds


class Fleet:
    """`count` servers long-polling the cluster from threads, each with its own connection."""

    def __init__(self, count: int) -> None:
        self.url = ""
        self.count = count
        self.stopping = threading.Event()
        self.started = 0.0
        self.answers = 0  # pops answered, with or without a job
        self.received: dict[str, float] = {}  # prompt text → when a server got its job
        self.arrived = threading.Condition()
        self.threads: list[threading.Thread] = []
        self.server = {"username": "bench-owner", "password": "bench-pass", "model": "bench"}

    def start(self, url: str) -> None:
        self.url = url
        self.started = time.monotonic()
        # Create the owner once: concurrent first pops would race to register the name.
        requests.post(f"{self.url}/generate/pop", json={**self.server, "name": "bench-0"})
        for index in range(self.count):
            thread = threading.Thread(target=self._serve, args=(index,), daemon=True)
            thread.start()
            self.threads.append(thread)
        time.sleep(1 + self.count / 100)  # every server has sent its first pop

    def _serve(self, index: int) -> None:
        session = requests.Session()
        body = {**self.server, "name": f"bench-{index}", "wait": POP_WAIT}
        while not self.stopping.is_set():
            try:
                answer = session.post(f"{self.url}/generate/pop", json=body, timeout=60).json()
            except requests.RequestException:
                continue
            self.answers += 1
            if answer.get("id"):
                with self.arrived:
                    self.received[answer["payload"]["prompt"]] = time.monotonic()
                    self.arrived.notify_all()

    def dispatch(self, index: int) -> tuple[float, float]:
        """Post one prompt; seconds until a waiting server held its job, counted from sending
        the POST and from receiving its answer (the prompt committed; may be negative)."""
        text = f"benchmark prompt {index} {random.random()}"
        sent = time.monotonic()
        response = requests.post(
            f"{self.url}/generate/prompt",
            json={"prompt": text, "params": {"n": 1, "max_length": 16}, "username": "bench-user"},
            timeout=10,
        )
        answered = time.monotonic()
        response.raise_for_status()
        with self.arrived:
            if not self.arrived.wait_for(lambda: text in self.received, timeout=60):
                raise RuntimeError(f"no server got prompt {index} within 60 s")
            received = self.received.pop(text)
        time.sleep(0.2)  # the server that got it is back to waiting
        return received - sent, received - answered

    def stop(self) -> None:
        self.stopping.set()


def _group_stats(pgid: int) -> Iterator[list[str]]:
    """The /proc/<pid>/stat fields (after the command name) of every process in the group."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            yield fields


def process_group_cpu(pgid: int) -> float:
    """User + system CPU seconds of every process in the group (the web server's workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    return sum((int(f[11]) + int(f[12])) / ticks for f in _group_stats(pgid))


def process_group_memory(pgid: int) -> tuple[int, int]:
    """Resident bytes and threads of the processes in the group."""
    stats = list(_group_stats(pgid))
    threads = sum(int(f[17]) for f in stats)
    return sum(int(f[21]) for f in stats) * os.sysconf("SC_PAGE_SIZE"), threads


def _p99(values: list[float]) -> float:
    return values[min(len(values) - 1, round(0.99 * (len(values) - 1)))]
