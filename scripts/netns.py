"""Test hosts on one machine: Linux network namespaces on one bridge, with a network delay.

Each host is a namespace `kcb-<name>` with one interface (eth0, 10.77.0.x/24) whose other end
is on a bridge in a namespace of its own (`kcb-switch`): the hosts reach each other and
nothing else (the machine's own network is not on the bridge), and every packet a host sends
waits `delay` in netem first, so a round trip between two hosts takes twice that (when the
kernel has netem: without it the hosts are joined without delay, and `delayed` says so). Used by
scripts/bench_cluster.py; needs root (`ip`, `tc`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

PREFIX = "kcb-"
SWITCH = f"{PREFIX}switch"
NETWORK = "10.77.0"


def sh(*args: str, check: bool = True, ns: str | None = None) -> str:
    command = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    done = subprocess.run(command, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


class Hosts:
    """The namespaces of one benchmark run: `add` them, `popen` in them, `cleanup` all."""

    def __init__(self, delay_ms: float) -> None:
        self.delay_ms = delay_ms
        self.hosts: dict[str, str] = {}  # name → address
        self.processes: list[subprocess.Popen] = []
        # Whether netem delays the hosts' packets: None before the first host, False on a
        # kernel without netem (the run says so; the hosts are then as near as loopback).
        self.delayed: bool | None = None

    def build_switch(self) -> None:
        cleanup()  # what an earlier run that was killed left
        sh("ip", "netns", "add", SWITCH)
        sh("ip", "link", "set", "lo", "up", ns=SWITCH)
        sh("ip", "link", "add", "br0", "type", "bridge", ns=SWITCH)
        sh("ip", "link", "set", "br0", "up", ns=SWITCH)

    def add(self, name: str, last_octet: int) -> str:
        ns, address = f"{PREFIX}{name}", f"{NETWORK}.{last_octet}"
        inside, outside = f"kcb{last_octet}h", f"kcb{last_octet}s"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
        sh("ip", "link", "set", inside, "netns", ns)
        sh("ip", "link", "set", outside, "netns", SWITCH)
        sh("ip", "link", "set", outside, "master", "br0", ns=SWITCH)
        sh("ip", "link", "set", outside, "up", ns=SWITCH)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "set", inside, "name", "eth0", ns=ns)
        sh("ip", "addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        if self.delay_ms and self.delayed is not False:
            delay = f"{self.delay_ms}ms"
            try:
                sh("tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", delay, ns=ns)
                self.delayed = True
            except RuntimeError:  # a kernel without netem (CONFIG_NET_SCH_NETEM)
                self.delayed = False
        self.hosts[name] = address
        return address

    def popen(self, host: str, args: Sequence[str], **options: Any) -> subprocess.Popen:
        """A process in `host`'s namespace, in a process group of its own (stopped by
        `stop`, or at the latest by `cleanup`)."""
        command = ["ip", "netns", "exec", f"{PREFIX}{host}", *args]
        process = subprocess.Popen(command, start_new_session=True, **options)
        self.processes.append(process)
        return process

    def run(self, host: str, *args: str, check: bool = True) -> str:
        return sh(*args, check=check, ns=f"{PREFIX}{host}")

    def stop(self, process: subprocess.Popen, sig: int = signal.SIGTERM, wait: float = 20) -> None:
        if process.poll() is None:
            _signal_group(process.pid, sig)
            try:
                process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait()
        _signal_group(process.pid, signal.SIGKILL)  # anything left in its group

    def cleanup(self) -> None:
        for process in reversed(self.processes):
            self.stop(process, wait=10)
        cleanup()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def cleanup() -> None:
    """Kill every process in a `kcb-` namespace and delete the namespaces (their interfaces
    go with them)."""
    names = [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]
    ours = [name for name in names if name.startswith(PREFIX)]
    for name in ours:
        for pid in sh("ip", "netns", "pids", name, check=False).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    if ours:
        time.sleep(0.5)
    for name in ours:
        sh("ip", "netns", "del", name, check=False)
