"""The test hosts of the benchmark across hosts (benchmarks/scripts/netns.py) with the userspace
wire that delays their packets where the kernel has no netem (benchmarks/scripts/wire.c): the delay
is there, large answers cross it whole, and nothing is left behind. Network namespaces need root
(the suite runs as root); gcc builds the wire."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import netns  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")

# Answers each 1-byte request with one byte, and a request for N bytes with N bytes.
SERVER = """
import socket
listener = socket.create_server(("0.0.0.0", 9000))
print("listening", flush=True)
connection, _ = listener.accept()
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
while request := connection.recv(64):
    connection.sendall(b"x" * int(request))
"""
# 30 round trips of one byte, then one answer of 5 MB: the round trips' times and its length.
CLIENT = """
import json, socket, sys, time
connection = socket.create_connection((sys.argv[1], 9000))
connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
trips = []
for _ in range(30):
    started = time.perf_counter()
    connection.sendall(b"1")
    connection.recv(1)
    trips.append(1000 * (time.perf_counter() - started))
connection.sendall(b"5000000")
received = 0
while received < 5000000 and (chunk := connection.recv(1 << 20)):
    received += len(chunk)
print(json.dumps({"trips_ms": sorted(trips), "received": received}))
"""


def test_the_wire_delays_each_way_and_carries_large_answers_and_goes_away():
    prefix = f"kt{os.getpid() % 100000}"
    hosts = netns.Hosts(1.0, prefix=prefix, wire=True)
    try:
        hosts.build_switch()
        hosts.add("a", 1)
        server_address = hosts.add("b", 2)
        assert hosts.delay_method == netns.WIRE and hosts.delayed
        wire = hosts.wire
        server = hosts.popen("b", [sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
        assert server.stdout.readline() == b"listening\n"
        measured = json.loads(hosts.run("a", sys.executable, "-c", CLIENT, server_address))
    finally:
        hosts.cleanup()
    trips = measured["trips_ms"]
    assert trips[0] >= 1.95  # 1 ms each way, never less
    assert trips[len(trips) // 2] < 20  # and not much more, on a busy machine too
    assert measured["received"] == 5_000_000
    assert hosts.carried["frames"] > 60 and hosts.carried["bytes"] > 5_000_000
    assert 0 < hosts.carried["late_p99_us"] <= 50_000  # how late past 1 ms frames left
    # Everything it made is gone: the wire, the server, the namespaces.
    assert wire.poll() is not None and server.poll() is not None
    listed = netns.sh("ip", "netns", "list")
    assert not [line for line in listed.splitlines() if line.startswith(f"{prefix}-")]


def test_a_run_killed_half_way_is_cleaned_up_by_the_next():
    prefix = f"ku{os.getpid() % 100000}"
    first = netns.Hosts(1.0, prefix=prefix, wire=True)
    first.build_switch()
    first.add("a", 1)
    left_behind = first.wire.pid  # as if the run had been killed: no cleanup
    netns.Hosts(1.0, prefix=prefix, wire=True).build_switch()  # the next run
    try:
        first.wire.wait(timeout=5)
        assert not Path(f"/proc/{left_behind}").exists()
        listed = netns.sh("ip", "netns", "list").split()
        assert f"{prefix}-a" not in listed and f"{prefix}-switch" in listed
    finally:
        netns.cleanup(prefix)
    assert f"{prefix}-switch" not in netns.sh("ip", "netns", "list").split()
