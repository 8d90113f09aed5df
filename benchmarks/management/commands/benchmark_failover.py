"""`manage.py benchmark_failover`: what a volunteer dropping out costs a client, and what the
signs of life cost the cluster (issue 25).

On a throwaway test database it starts the web server as `./run.sh` does (WEB_WORKERS
processes) with KOBOLDCLUSTER_STALL_SECONDS = `--stall`.

Kills: two KoboldCpp test doubles (a token every 50 ms, in this process) and this
repository's bridge for each, serving the same model. `--kills` times, a client opens
`POST /api/extra/generate/stream` (or the OpenAI face, `--face openai`); after its first
`--after` tokens the bridge holding the job is killed with SIGKILL; the other continues.
Per kill: from the kill to the next token at the client (one clock), and whether the
stream's text is the stored generation. The killed bridge is started again for the next.

Heartbeats: `--servers` servers each hold a job and post a heartbeat every `--interval`
seconds (evenly spread, each from its own connection) for `--seconds`; the web server's
process CPU time (all its processes) per second of that, less the same time idle.
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
from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser
from django.db import connection
from django.test.utils import setup_databases, teardown_databases

from benchmarks.management.commands.benchmark_dispatch import process_group_cpu, settle
from bridge.tests.backend_doubles import FakeKoboldCpp
from bridge.tests.processes import Process, start_bridge

PASSWORD = "bench-pass"
TOKENS = 80  # 4 s of tokens at 50 ms each


class Command(BaseCommand):
    help = "Measure kill -9 of a bridge to the next token, and the heartbeats' CPU cost."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--stall", type=int, default=15, help="STALL_SECONDS.")
        parser.add_argument("--kills", type=int, default=20)
        parser.add_argument("--after", type=int, default=10, help="Tokens before a kill.")
        parser.add_argument("--face", choices=("kobold", "openai"), default="kobold")
        parser.add_argument("--servers", type=int, default=200, help="Heartbeating servers.")
        parser.add_argument("--interval", type=float, default=5.0, help="Between heartbeats.")
        parser.add_argument("--seconds", type=float, default=30.0, help="Heartbeats measured.")
        parser.add_argument("--workers", default="2", help="Web processes (WEB_WORKERS).")
        parser.add_argument("--only", choices=("kills", "heartbeats"), default=None)

    def handle(self, *args: Any, **opts: Any) -> None:
        from koboldcluster.testing import ClusterProcess

        self.stdout.write(
            f"Failover benchmark on {connection.vendor}, {opts['workers']} workers, "
            f"stall time {opts['stall']} s"
        )
        old_config = setup_databases(verbosity=0, interactive=False)
        env = {
            "WEB_WORKERS": opts["workers"],
            "LOG_LEVEL": "WARNING",
            "KOBOLDCLUSTER_STALL_SECONDS": str(opts["stall"]),
            "KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS": "300",
        }
        web = ClusterProcess(env)
        try:
            web.start()
            if opts["only"] in (None, "kills"):
                self._kills(web.url, opts)
            if opts["only"] in (None, "heartbeats"):
                self._heartbeats(web, opts)
        finally:
            web.stop()
            teardown_databases(old_config, verbosity=0)

    def _kills(self, url: str, opts: dict[str, Any]) -> None:
        first, second = FakeKoboldCpp(tokens=TOKENS), FakeKoboldCpp(tokens=TOKENS)
        with first, second, tempfile.TemporaryDirectory() as tmp:
            bridges = Bridges(Path(tmp), url, {"bench-a": first, "bench-b": second})
            try:
                bridges.start_all()
                delays, joined = [], 0
                for number in range(opts["kills"]):
                    delay, intact = self._kill_round(url, bridges, number, opts)
                    delays.append(delay)
                    joined += intact
                    self.stdout.write(f"  kill {number + 1}: next token after {delay:.2f} s")
            finally:
                bridges.stop_all()
        delays.sort()
        p99 = delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))]
        self.stdout.write(
            f"  kill -9 of the bridge to the next token at the client ({opts['face']} face), "
            f"stall time {opts['stall']} s: mean {statistics.mean(delays):.2f} s, p50 "
            f"{statistics.median(delays):.2f} s, p99 {p99:.2f} s, max {delays[-1]:.2f} s "
            f"({len(delays)} kills; {joined} streams equal to their stored generation)"
        )

    def _kill_round(
        self, url: str, bridges: Bridges, number: int, opts: dict[str, Any]
    ) -> tuple[float, bool]:
        from generations.models import Job

        stream = TimedStream(url, opts["face"], f"Benchmark round {number}")
        stream.wait_for_chars(4 * opts["after"])
        holder = (
            Job.objects.filter(state=Job.State.PROCESSING)
            .values_list("server__name", flat=True)
            .first()
        )
        killed = time.monotonic()
        bridges.kill(holder)
        stream.join()
        delay = stream.first_piece_after(killed) - killed
        stored = Job.objects.filter(state=Job.State.DONE, prompt__text=stream.prompt)
        intact = stored.values_list("text", flat=True).first() == stream.text
        bridges.start(holder)
        return delay, intact

    def _heartbeats(self, web: Any, opts: dict[str, Any]) -> None:
        count, interval, seconds = opts["servers"], opts["interval"], opts["seconds"]
        jobs = _jobs_for_servers(web.url, count)
        settle(web)
        before, started = process_group_cpu(web.process.pid), time.monotonic()
        time.sleep(seconds)
        idle = (process_group_cpu(web.process.pid) - before) / (time.monotonic() - started)
        sent = Heartbeats(web.url, jobs, interval).run(seconds, web)
        per_second = sent.cpu / sent.elapsed
        elapsed = sent.elapsed
        extra = max(per_second - idle, 0.0)
        rate = sent.count / elapsed
        self.stdout.write(
            f"  {count} servers heartbeating every {interval:g} s ({rate:.1f} a second, "
            f"{sent.failed} failed) for {elapsed:.0f} s: web server CPU {100 * per_second:.2f} "
            f"% of a core ({100 * idle:.2f} % idle before), {1000 * extra / rate:.2f} ms of CPU "
            "per heartbeat"
        )


class Bridges:
    """The bridges of the kill rounds, by server name: each serves its own backend."""

    def __init__(self, tmp: Path, url: str, backends: dict[str, FakeKoboldCpp]) -> None:
        self.tmp, self.url, self.backends = tmp, url, backends
        self.running: dict[str, Process] = {}

    def start(self, name: str) -> None:
        process = start_bridge(
            self.tmp,
            *("--cluster-url", self.url, "--backend-url", self.backends[name].url),
            *("--name", name, "--username", "bench", "--password", PASSWORD),
            BRIDGE_INTERVAL="0.1",
        )
        process.wait_for("ready", timeout=60)
        self.running[name] = process
        deadline = time.monotonic() + 60
        while name not in [s["name"] for s in requests.get(f"{self.url}/servers").json()]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not check in")
            time.sleep(0.1)
        time.sleep(0.5)  # its first pop is waiting

    def start_all(self) -> None:
        for name in self.backends:
            self.start(name)

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        process.popen.kill()
        process.popen.wait(10)

    def stop_all(self) -> None:
        for process in self.running.values():
            process.stop()


class TimedStream:
    """A client's stream read in a thread: each non-empty piece of text with when it came."""

    def __init__(self, url: str, face: str, prompt: str) -> None:
        self.prompt, self.face = prompt, face
        self.pieces: list[tuple[float, str]] = []
        if face == "openai":
            self.path = "/v1/completions"
            self.body = {"model": "", "prompt": prompt, "max_tokens": TOKENS, "stream": True}
        else:
            self.path = "/api/extra/generate/stream"
            self.body = {"prompt": prompt, "max_length": TOKENS}
        self.thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self.thread.start()

    def _read(self, url: str) -> None:
        with requests.post(f"{url}{self.path}", json=self.body, stream=True, timeout=600) as r:
            for line in r.iter_lines(decode_unicode=True):
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                data = json.loads(line[6:])
                piece = data.get("token", "")
                if self.face == "openai":
                    choices = data.get("choices") or [{}]
                    piece = choices[0].get("text") or ""
                if piece:
                    self.pieces.append((time.monotonic(), piece))

    @property
    def text(self) -> str:
        return "".join(piece for _, piece in self.pieces)

    def wait_for_chars(self, chars: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.text) < chars:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the stream got {len(self.text)} characters only")
            time.sleep(0.01)

    def join(self) -> None:
        self.thread.join(600)

    def first_piece_after(self, moment: float) -> float:
        return min((at for at, _ in self.pieces if at > moment), default=float("nan"))


def _jobs_for_servers(url: str, count: int) -> list[str]:
    """`count` servers, each popped one job of its own prompt: their job ids."""
    session = requests.Session()
    ids = []
    per_account = settings.KOBOLDCLUSTER["UNTRUSTED_SERVERS_PER_ACCOUNT"]
    for index in range(count):
        # An untrusted account may have UNTRUSTED_SERVERS_PER_ACCOUNT servers: that many each.
        owner = f"bench-owner-{index // per_account}"
        body = {"username": owner, "password": PASSWORD, "name": f"hb-{index}"}
        body.update(model="bench", max_length=80, max_content_length=2048)
        session.post(f"{url}/generate/pop", json=body, timeout=30)  # online first
        prompt = {"prompt": f"Heartbeat {index}", "params": {"n": 1, "max_length": 16}}
        session.post(f"{url}/generate/prompt", json=prompt, timeout=30).raise_for_status()
        job = session.post(f"{url}/generate/pop", json=body, timeout=30).json()
        if not job.get("id"):
            raise RuntimeError(f"server hb-{index} got no job: {job}")
        ids.append(job["id"])
    return ids


class Heartbeats:
    """Each job's server posts a heartbeat every `interval` seconds, the servers spread
    evenly over the interval, each from a thread with its own connection."""

    def __init__(self, url: str, jobs: list[str], interval: float) -> None:
        self.url, self.jobs, self.interval = url, jobs, interval
        self.count = self.failed = 0
        self.elapsed = self.cpu = 0.0  # seconds of wall time, and of the web server's CPU
        self._lock = threading.Lock()

    def run(self, seconds: float, web: Any) -> Heartbeats:
        cpu_before = process_group_cpu(web.process.pid)
        self.started = time.monotonic()
        self.until = self.started + seconds
        threads = [
            threading.Thread(target=self._beat, args=(job, index), daemon=True)
            for index, job in enumerate(self.jobs)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.elapsed = time.monotonic() - self.started
        self.cpu = process_group_cpu(web.process.pid) - cpu_before
        return self

    def _beat(self, job: str, index: int) -> None:
        session = requests.Session()
        at = self.started + self.interval * index / len(self.jobs)
        while at < self.until:
            time.sleep(max(at - time.monotonic(), 0))
            body = {"id": job, "password": PASSWORD}  # the owner's, whoever it is
            answer = session.post(f"{self.url}/generate/progress", json=body, timeout=30)
            with self._lock:
                self.count += 1
                self.failed += answer.status_code != 200
            at += self.interval
