"""Test hosts on one machine: Linux network namespaces joined by one switch, with a delay.

Each host is a namespace `<prefix>-<name>` with one interface (eth0, 10.77.0.x/24) whose other
end is in a namespace of its own (`<prefix>-switch`): the hosts reach each other and nothing
else (the machine's own network is not there), and every packet between two hosts waits
`delay_ms` on the way, so a round trip takes twice that. How the delay is made
(`delay_method`):
- "netem": where the kernel has netem (CONFIG_NET_SCH_NETEM), the switch is a kernel bridge and
  each host's eth0 holds what it sends in `tc netem`;
- "userspace wire": where it has not, the switch is benchmarks/scripts/wire.c, a learning switch
  that holds every frame `delay_ms` before sending it on (compiled with gcc once per version of its
  source, cached in var/wire/, and run at real-time priority so that the machine's load does
  not lengthen the delay more than it must). It is restarted with every host added: add the
  hosts before any traffic.
Used by benchmarks/scripts/bench_cluster.py and benchmarks/tests/test_netns.py; needs root (`ip`,
`tc`) and, for the wire, gcc.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

PREFIX = "kcb"
NETWORK = "10.77.0"
NETEM, WIRE = "netem", "userspace wire"
WIRE_SOURCE = Path(__file__).resolve().with_name("wire.c")
WIRE_CACHE = Path(__file__).resolve().parents[2] / "var" / "wire"


def sh(*args: str, check: bool = True, ns: str | None = None) -> str:
    command = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    done = subprocess.run(command, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


class Hosts:
    """The namespaces of one run: `build_switch`, `add` them, `popen` in them, `cleanup` all.

    `wire`: None to use netem where the kernel has it and the userspace wire elsewhere, True
    for the wire in any case. `prefix` keeps two runs (a benchmark and a test) apart."""

    def __init__(self, delay_ms: float, prefix: str = PREFIX, wire: bool | None = None) -> None:
        self.delay_ms, self.prefix, self.use_wire = delay_ms, prefix, wire
        self.switch = f"{prefix}-switch"
        self.hosts: dict[str, str] = {}  # name → address
        self.processes: list[subprocess.Popen] = []
        # How the hosts' packets are delayed: NETEM, WIRE, or None (no delay asked for).
        self.delay_method: str | None = None
        self.ports: list[str] = []  # the switch's ends of the hosts' veth pairs
        self.wire: subprocess.Popen | None = None
        self.carried: dict[str, int] = {}  # what the last wire carried, read when it stopped

    @property
    def delayed(self) -> bool:
        return self.delay_method is not None

    def build_switch(self) -> None:
        cleanup(self.prefix)  # what an earlier run that was killed left
        sh("ip", "netns", "add", self.switch)
        sh("ip", "link", "set", "lo", "up", ns=self.switch)
        if self.delay_ms:
            netem = not self.use_wire and _has_netem(self.switch)
            self.delay_method = NETEM if netem else WIRE
        if self.delay_method == WIRE:  # the wire alone forwards: no address, no IPv6 chatter
            sh("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1", ns=self.switch)  # fmt: skip
        else:
            sh("ip", "link", "add", "br0", "type", "bridge", ns=self.switch)
            sh("ip", "link", "set", "br0", "up", ns=self.switch)

    def add(self, name: str, last_octet: int) -> str:
        ns, address = f"{self.prefix}-{name}", f"{NETWORK}.{last_octet}"
        inside, outside = f"{self.prefix}{last_octet}h", f"{self.prefix}{last_octet}s"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
        sh("ip", "link", "set", inside, "netns", ns)
        sh("ip", "link", "set", outside, "netns", self.switch)
        if self.delay_method != WIRE:
            sh("ip", "link", "set", outside, "master", "br0", ns=self.switch)
        sh("ip", "link", "set", outside, "up", "promisc", "on", ns=self.switch)
        sh("ip", "link", "set", "lo", "up", ns=ns)
        sh("ip", "link", "set", inside, "name", "eth0", ns=ns)
        sh("ip", "addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
        sh("ip", "link", "set", "eth0", "up", ns=ns)
        if self.delay_method == NETEM:
            delay = f"{self.delay_ms}ms"
            sh("tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", delay, ns=ns)
        elif self.delay_method == WIRE:
            self.ports.append(outside)
            self._start_wire()
        self.hosts[name] = address
        return address

    def _start_wire(self) -> None:
        """(Re)start the wire on every port so far; returns once its ports are open."""
        self._stop_wire()
        program = [str(wire_program()), str(round(self.delay_ms * 1000)), *self.ports]
        self.wire = subprocess.Popen(
            ["ip", "netns", "exec", self.switch, *_realtime(), *program],
            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        if self.wire.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the wire did not start: {self._stop_wire()}")

    def _stop_wire(self) -> str:
        """Stop the wire; what it said on stderr (its last line: what it carried)."""
        if self.wire is None:
            return ""
        self.stop(self.wire, wait=5)
        said = self.wire.stderr.read().strip()
        with contextlib.suppress(ValueError, IndexError):
            self.carried = json.loads(said.splitlines()[-1])
        self.wire = None
        return said

    def popen(self, host: str, args: Sequence[str], **options: Any) -> subprocess.Popen:
        """A process in `host`'s namespace, in a process group of its own (stopped by
        `stop`, or at the latest by `cleanup`)."""
        command = ["ip", "netns", "exec", f"{self.prefix}-{host}", *args]
        process = subprocess.Popen(command, start_new_session=True, **options)
        self.processes.append(process)
        return process

    def run(self, host: str, *args: str, check: bool = True) -> str:
        return sh(*args, check=check, ns=f"{self.prefix}-{host}")

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
        self._stop_wire()
        cleanup(self.prefix)


def wire_program() -> Path:
    """benchmarks/scripts/wire.c compiled once per version of its source (its name holds the
    hash)."""
    source = WIRE_SOURCE.read_bytes()
    program = WIRE_CACHE / f"wire-{hashlib.sha256(source).hexdigest()[:16]}"
    if not program.exists():
        WIRE_CACHE.mkdir(parents=True, exist_ok=True)
        building = program.with_name(f"{program.name}.{os.getpid()}")
        sh("gcc", "-O2", "-Wall", "-o", str(building), str(WIRE_SOURCE))
        building.replace(program)  # whole or not at all, should two runs build it at once
    return program


def _realtime() -> list[str]:
    """`chrt -f 1` where this machine lets a process take real-time priority: the wire then
    runs as soon as a frame is due, as a real network would not wait for a busy CPU."""
    allowed = subprocess.run(["chrt", "-f", "1", "true"], capture_output=True).returncode == 0
    return ["chrt", "-f", "1"] if allowed else []


def _has_netem(ns: str) -> bool:
    """Whether this kernel delays with netem: tried on the namespace's loopback."""
    try:
        sh("tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms", ns=ns)
    except RuntimeError:
        return False
    sh("tc", "qdisc", "del", "dev", "lo", "root", ns=ns, check=False)
    return True


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def cleanup(prefix: str = PREFIX) -> None:
    """Kill every process in a `<prefix>-` namespace (the wire among them) and delete the
    namespaces (their interfaces go with them)."""
    names = [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]
    ours = [name for name in names if name.startswith(f"{prefix}-")]
    for name in ours:
        for pid in sh("ip", "netns", "pids", name, check=False).split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    if ours:
        time.sleep(0.5)
    for name in ours:
        sh("ip", "netns", "del", name, check=False)
