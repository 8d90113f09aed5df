#!/usr/bin/env python3
"""What the userspace wire (benchmarks/scripts/wire.c) costs, against a kernel bridge without delay.

Two test hosts (benchmarks/scripts/netns.py), once on a bridge and once on the wire with --delay-ms:
a server answers every 200 bytes with the same, a client keeps --connections of them going until
--trips round trips are done. Prints, for each, the wall time, the CPU of the client, the
server and the wire per round trip (µs), and what the wire says it carried (frames, how late
past the delay they left, its user and system time). Root only (docs/benchmarks.md, "The
wire's cost").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from netns import Hosts  # noqa: E402

SERVER = """
import selectors, socket
sel = selectors.DefaultSelector()
listener = socket.create_server(("0.0.0.0", 9100))
listener.setblocking(False)
sel.register(listener, selectors.EVENT_READ)
print("up", flush=True)
while True:
    for key, _ in sel.select():
        if key.fileobj is listener:
            connection, _ = listener.accept()
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(connection, selectors.EVENT_READ)
        elif data := key.fileobj.recv(4096):
            key.fileobj.send(data)
        else:
            sel.unregister(key.fileobj)
"""
CLIENT = """
import selectors, socket, sys
address, connections, trips = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sel = selectors.DefaultSelector()
for _ in range(connections):
    c = socket.create_connection((address, 9100))
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.send(b"q" * 200)
    sel.register(c, selectors.EVENT_READ)
done = 0
while done < trips:
    for key, _ in sel.select():
        key.fileobj.recv(4096)
        done += 1
        if done + connections <= trips:
            key.fileobj.send(b"q" * 200)
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def measure(hosts: Hosts, args: argparse.Namespace) -> dict:
    """One run of round trips between two new hosts; the CPU of each part per round trip."""
    hosts.build_switch()
    hosts.add("a", 1)
    address = hosts.add("b", 2)
    server = hosts.popen("b", [sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
    server.stdout.readline()
    wire_before = cpu_seconds(hosts.wire.pid) if hosts.wire else 0.0
    server_before, started = cpu_seconds(server.pid), time.monotonic()
    client = hosts.popen(
        "a", [sys.executable, "-c", CLIENT, address, str(args.connections), str(args.trips)]
    )
    client_cpu = 0.0
    while client.poll() is None:  # its last reading before it exits
        client_cpu = cpu_seconds(client.pid)
        time.sleep(0.02)
    per_trip = 1e6 / args.trips
    return {
        "delay": hosts.delay_method or "none (bridge)",
        "seconds": round(time.monotonic() - started, 2),
        "client_us": round(client_cpu * per_trip, 1),
        "server_us": round((cpu_seconds(server.pid) - server_before) * per_trip, 1),
        "wire_us": round(
            (cpu_seconds(hosts.wire.pid) - wire_before) * per_trip if hosts.wire else 0.0, 1
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--delay-ms", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--trips", type=int, default=20000)
    args = parser.parse_args()
    for hosts in (Hosts(0, prefix="kbw"), Hosts(args.delay_ms, prefix="kbw", wire=True)):
        try:
            result = measure(hosts, args)
        finally:
            hosts.cleanup()
        print(json.dumps({**result, "carried": hosts.carried}), flush=True)


if __name__ == "__main__":
    main()
