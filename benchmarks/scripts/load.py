#!/usr/bin/env python3
"""Load for a running cluster through real HTTP connections: volunteers, prompts and streams.

Used by benchmarks/scripts/bench_node.py (one web node) and benchmarks/scripts/bench_cluster.py
(several nodes behind HAProxy, each role in a network namespace of its own), and by hand against any
cluster that runs with rate limits off (KOBOLDCLUSTER_RATE_LIMITS=off). It imports nothing of the
cluster: only aiohttp, so that it runs wherever the virtualenv does.

Roles (any together in one process):
  --volunteers N  N servers, each long-polling `/generate/pop` with `wait: 30` on a connection
                  of its own (20 servers per account, the most a new, untrusted account may
                  run: UNTRUSTED_SERVERS_PER_ACCOUNT), opened
                  `--ramp` per second. A job from `--prompts` is submitted at once, and the
                  time from the prompt's POST to its pop's answer noted (one clock: this
                  machine's monotonic clock, the same in every network namespace). A stream's
                  job is held `--hold` seconds with progress every `--progress-every` seconds,
                  each progress text ending in the monotonic time it was sent.
  --prompts R     R prompts per second to `/generate/prompt` (open loop: not waiting for the
                  last answer), each naming the time of its POST.
  --streams M     M clients keep a stream (`/api/extra/generate/stream`) open each: the time
                  from a progress post to its token reaching the client is noted.
It runs `--duration` seconds (or until SIGINT/SIGTERM), prints `{"event": "ready", ...}` once
every volunteer's first pop was sent, then one JSON line of results; SIGUSR1 prints the
results so far (`"event": "snapshot"`) and starts the dispatch latencies afresh.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

SERVERS_PER_ACCOUNT = 20  # an untrusted account's limit, as a new volunteer's account is
PASSWORD = "load-password"
MODEL = "load-model"
TIME_MARK = re.compile(r"t=(\d+\.\d+)")
MAX_IN_FLIGHT = 500  # prompts posted and not answered yet


@dataclass
class Results:
    dispatch: list[float] = field(default_factory=list)  # seconds, prompt POST → pop answer
    post_rtt: list[float] = field(default_factory=list)  # seconds a prompt's POST took
    token_delay: list[float] = field(default_factory=list)  # seconds, progress post → client
    first_token: list[float] = field(default_factory=list)  # seconds, stream open → 1st token
    jobs: Counter[str] = field(default_factory=Counter)  # prompt nonce → jobs received
    sent: list[str] = field(default_factory=list)  # nonces of prompts created
    errors: Counter[str] = field(default_factory=Counter)
    pops: int = 0
    streams_done: int = 0
    stream_errors: Counter[str] = field(default_factory=Counter)
    # Seconds from a volunteer's failed pop to sending the pop that got through.
    reconnects: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        duplicates = sum(1 for count in self.jobs.values() if count > 1)
        return {
            "event": "results",
            "pops": self.pops,
            "dispatch_ms": describe(self.dispatch),
            "prompt_post_ms": describe(self.post_rtt),
            "token_delay_ms": describe(self.token_delay),
            "first_token_ms": describe(self.first_token),
            "prompts_sent": len(self.sent),
            "prompts_served": len(self.jobs),
            "sent_nonces": self.sent,
            "served_nonces": dict(self.jobs),
            "duplicate_jobs": duplicates,
            "streams_done": self.streams_done,
            "stream_errors": dict(self.stream_errors),
            "errors": dict(self.errors),
            "reconnect_ms": describe(self.reconnects),
        }


def describe(seconds: list[float]) -> dict[str, float]:
    """Count, mean, p50, p99 and max in milliseconds."""
    if not seconds:
        return {"count": 0}
    ordered = sorted(seconds)

    def at(share: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))], 2)

    mean = round(1000 * sum(ordered) / len(ordered), 2)
    return {"count": len(ordered), "mean": mean, "p50": at(0.5), "p99": at(0.99), "max": at(1)}


class Load:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = args.url.rstrip("/")
        self.results = Results()
        self.stopping = asyncio.Event()
        self.tag = args.tag or uuid.uuid4().hex[:6]
        # A test cluster's self-signed certificate (benchmarks/scripts/bench_cluster.py) is not
        # checked.
        self.ssl = not args.insecure

    def snapshot(self) -> None:
        """SIGUSR1: the results so far; the dispatch latencies start again from none."""
        print(json.dumps({**self.results.summary(), "event": "snapshot"}), flush=True)
        self.results.dispatch.clear()

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ssl=self.ssl)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as self.session:
            tasks = [asyncio.create_task(self._volunteers())]
            if self.args.streams:
                tasks += [asyncio.create_task(self._stream(i)) for i in range(self.args.streams)]
            if self.args.prompts:
                tasks.append(asyncio.create_task(self._prompts()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), self.args.duration)
            self.stopping.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _volunteers(self) -> None:
        count = self.args.volunteers
        if not count:
            print(json.dumps({"event": "ready", "volunteers": 0}), flush=True)
            return
        # One first pop per account, one at a time: concurrent first pops would race to
        # create the same account.
        accounts = (count + SERVERS_PER_ACCOUNT - 1) // SERVERS_PER_ACCOUNT
        for account in range(accounts):  # as its first server
            await self._pop_once(self._server(account, str(account * SERVERS_PER_ACCOUNT)))
        tasks = []
        for index in range(count):
            server = self._server(index // SERVERS_PER_ACCOUNT, str(index))
            tasks.append(asyncio.create_task(self._volunteer(server)))
            if self.args.ramp and index % 10 == 9:
                await asyncio.sleep(10 / self.args.ramp)
        print(json.dumps({"event": "ready", "volunteers": count}), flush=True)
        await asyncio.gather(*tasks)

    def _server(self, account: int, name: str) -> dict[str, Any]:
        return {
            "username": f"load-{self.tag}-{account}",
            "password": PASSWORD,
            "name": f"load-{self.tag}-{name}",
            "model": MODEL,
            "max_length": 512,
            "max_content_length": 4096,
        }

    async def _pop_once(self, server: dict[str, Any]) -> None:
        async with self.session.post(f"{self.url}/generate/pop", json=server) as response:
            await response.read()

    async def _volunteer(self, server: dict[str, Any]) -> None:
        """Pop with `wait` for ever on one connection of its own; serve what comes."""
        connector = aiohttp.TCPConnector(limit=1, ssl=self.ssl)
        async with aiohttp.ClientSession(connector=connector) as own:
            body, cut_off = {**server, "wait": 30}, None
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    async with own.post(
                        f"{self.url}/generate/pop", json=body, timeout=aiohttp.ClientTimeout(60)
                    ) as response:
                        status = response.status
                        answer = await response.json(content_type=None) if status == 200 else {}
                except (aiohttp.ClientError, TimeoutError, ValueError) as error:
                    self.results.errors[f"pop {type(error).__name__}"] += 1
                    cut_off = cut_off or time.monotonic()
                    await asyncio.sleep(1)  # as the bridge does before it tries again
                    continue
                if status != 200:
                    self.results.errors[f"pop {status}"] += 1
                    cut_off = cut_off or time.monotonic()
                    await asyncio.sleep(1)
                    continue
                if cut_off is not None:  # cut off until the pop that got through was sent
                    self.results.reconnects.append(started - cut_off)
                    cut_off = None
                self.results.pops += 1
                if answer.get("id"):
                    await self._serve(own, server, answer)

    async def _serve(self, own: aiohttp.ClientSession, server: dict[str, Any], job: Any) -> None:
        now, prompt = time.monotonic(), job["payload"]["prompt"]
        if prompt.startswith("prompt "):
            nonce, sent = prompt.split()[1], float(TIME_MARK.search(prompt).group(1))
            self.results.jobs[nonce] += 1
            self.results.dispatch.append(now - sent)
        elif prompt.startswith("stream "):
            text, ends = "", now + self.args.hold
            while time.monotonic() < ends and not self.stopping.is_set():
                text += f" t={time.monotonic():.6f}"
                progress = {"id": job["id"], "password": PASSWORD, "text": text}
                await self._post(own, "/generate/progress", progress, "progress")
                await asyncio.sleep(self.args.progress_every)
        done = {"id": job["id"], "password": PASSWORD, "generation": "done"}
        await self._post(own, "/generate/submit", done, "submit")

    async def _post(
        self, session: aiohttp.ClientSession, path: str, body: dict[str, Any], what: str
    ) -> Any:
        try:
            async with session.post(f"{self.url}{path}", json=body) as response:
                if response.status not in (200, 202):
                    self.results.errors[f"{what} {response.status}"] += 1
                    return None
                return await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            self.results.errors[f"{what} {type(error).__name__}"] += 1
            return None

    async def _prompts(self) -> None:
        """Open loop: a prompt every 1/R seconds whether or not the last was answered (at
        most MAX_IN_FLIGHT at once), as independent clients send them."""
        interval, index, started = 1 / self.args.prompts, 0, time.monotonic()
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not self.stopping.is_set():
                if len(in_flight) < MAX_IN_FLIGHT:
                    task = asyncio.create_task(self._prompt(f"{self.tag}-{index}"))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                else:
                    self.results.errors["prompt not sent: too many in flight"] += 1
                index += 1
                await asyncio.sleep(max(0.0, started + index * interval - time.monotonic()))
        finally:
            await asyncio.gather(*in_flight, return_exceptions=True)

    async def _prompt(self, nonce: str) -> None:
        sent = time.monotonic()
        ask = {"prompt": f"prompt {nonce} t={sent:.6f}", "params": {"n": 1, "max_length": 16}}
        if await self._post(self.session, "/generate/prompt", ask, "prompt") is not None:
            self.results.post_rtt.append(time.monotonic() - sent)
            self.results.sent.append(nonce)

    async def _stream(self, index: int) -> None:
        """Keep one stream open: a new one as soon as the last ends."""
        await asyncio.sleep(index / max(self.args.ramp, 1))
        while not self.stopping.is_set():
            body = {"prompt": f"stream {self.tag}-{index}", "max_length": 64}
            opened, first = time.monotonic(), True
            try:
                async with self.session.post(
                    f"{self.url}/api/extra/generate/stream", json=body
                ) as response:
                    if response.status != 200:
                        self.results.stream_errors[f"status {response.status}"] += 1
                        await asyncio.sleep(1)
                        continue
                    async for line in response.content:
                        first = self._on_stream_line(line, opened, first)
                self.results.streams_done += 1
            except (aiohttp.ClientError, TimeoutError) as error:
                self.results.stream_errors[type(error).__name__] += 1
                await asyncio.sleep(1)

    def _on_stream_line(self, line: bytes, opened: float, first: bool) -> bool:
        if line.startswith(b"event: error"):
            self.results.stream_errors["error event"] += 1
        if not line.startswith(b"data:"):
            return first
        now = time.monotonic()
        marks = TIME_MARK.findall(line.decode("utf-8", "replace"))
        self.results.token_delay.extend(now - float(mark) for mark in marks)
        if marks and first:
            self.results.first_token.append(now - opened)
            return False
        return first


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--volunteers", type=int, default=0)
    parser.add_argument("--prompts", type=float, default=0, help="prompts per second")
    parser.add_argument("--streams", type=int, default=0)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--ramp", type=float, default=200, help="connections opened per second")
    parser.add_argument("--hold", type=float, default=30, help="seconds a stream's job lasts")
    parser.add_argument("--progress-every", type=float, default=2.0)
    parser.add_argument("--tag", default="", help="names' prefix (several processes: distinct)")
    parser.add_argument("--insecure", action="store_true", help="do not check TLS certificates")
    return parser.parse_args(argv)


def main(argv: list[str]) -> None:
    load = Load(parse(argv))
    loop = asyncio.new_event_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, load.stopping.set)
    loop.add_signal_handler(signal.SIGUSR1, load.snapshot)
    loop.run_until_complete(load.run())
    print(json.dumps(load.results.summary()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
