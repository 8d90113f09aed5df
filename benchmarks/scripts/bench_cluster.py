#!/usr/bin/env python3
"""The benchmark across hosts: the reference deployment (deploy/) on test hosts made of
network namespaces, driven through its balancer (README "Benchmark across hosts").

Hosts (benchmarks/scripts/netns.py; every packet between two hosts waits --delay-ms, 1 ms, in netem
or, on a kernel without it, in a userspace wire):
  lb 10.77.0.10      HAProxy with deploy/haproxy/haproxy.cfg (its web nodes, a self-signed
                     certificate and the stats socket put in; TLS ends here)
  web1..3 .11-.13    scripts/web.sh with the env of deploy/cluster.env and web.env
  db .20             a PostgreSQL of its own (initdb'd into a temporary folder)
  redis .21          a redis-server of its own
  sched .30          migrate, ensure_schedules, qcluster (the scheduler unit's commands)
  vol .40            the volunteers (benchmarks/scripts/load.py)
  cli .41            the clients (benchmarks/scripts/load.py)

For each count of web nodes (--nodes 1,2,3) on a fresh database: the volunteers long-poll
through the balancer; then clients post --prompts per second (dispatch latency, CPU per
generation of each web node, PostgreSQL, Redis and HAProxy, Redis commands and WAL bytes per
generation), then hold --streams streams (the delay of streamed tokens, client minus
volunteer). --ramp rates: prompts at rising rates on the most nodes, to see what gives
first. --kill-at S: a separate run in which one web node is killed (SIGKILL, its whole
process group) S seconds into the load. Every namespace and process it made is removed at
the end, whatever happens. Root only; never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "scripts"))
from bench_node import PYTHON  # noqa: E402
from cluster_hosts import URL, Cluster, until  # noqa: E402
from netns import Hosts  # noqa: E402

from benchmarks import cluster_bench  # noqa: E402


def load(hosts: Hosts, host: str, *args: str) -> subprocess.Popen:
    command = [
        PYTHON,
        str(ROOT / "benchmarks" / "scripts" / "load.py"),
        "--url",
        URL,
        "--insecure",
        "--duration",
        "3600",
        *args,
    ]
    return hosts.popen(host, command, stdout=subprocess.PIPE, text=True)


def event(process: subprocess.Popen, name: str, sig: int | None = None) -> dict[str, Any]:
    if sig is not None:
        process.send_signal(sig)
    for line in process.stdout:
        found = json.loads(line)
        if found.get("event") == name:
            return found
    raise RuntimeError(f"the load process ended before {name!r}")


def spent(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    cpu = {name: after["cpu"][name] - before["cpu"].get(name, 0.0) for name in after["cpu"]}
    return {
        "cpu": cpu,
        "seconds": after["at"] - before["at"],
        "shares": {name: seconds / (after["at"] - before["at"]) for name, seconds in cpu.items()},
        "redis": cluster_bench.calls_between(before["redis"], after["redis"]),
        "wal": cluster_bench.wal_bytes(before["wal"], after["wal"]),
        "transactions": after["transactions"] - before["transactions"],
    }


def idle_phase(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    """The volunteers waiting, nothing else, for --seconds: what waiting costs each part."""
    before = cluster.reading()
    time.sleep(args.seconds)
    return spent(before, cluster.reading())


def generations_phase(
    cluster: Cluster, args: argparse.Namespace, rate: float, fleet: subprocess.Popen
) -> dict[str, Any]:
    """Prompts at `rate` per second for --seconds, every one served at once: what each part
    spent, from before the first prompt to after the last was served, and the generations."""
    served_before = event(fleet, "snapshot", signal.SIGUSR1)["prompts_served"]
    before = cluster.reading()
    tag = f"p{rate:g}-{int(time.monotonic())}"  # each phase's prompts apart from the last's
    clients = load(cluster.hosts, "cli", "--prompts", str(rate), "--tag", tag)
    time.sleep(args.seconds)
    posted = event(clients, "results", signal.SIGTERM)
    clients.wait()
    time.sleep(1)  # the last jobs submitted
    after = cluster.reading()
    served = event(fleet, "snapshot", signal.SIGUSR1)
    generations = served["prompts_served"] - served_before
    return {
        "rate": rate,
        "posted": posted,
        "generations": generations,
        "dispatch_ms": served["dispatch_ms"],
        **spent(before, after),
    }


def fleet_args(args: argparse.Namespace, tag: str) -> list[str]:
    return ["--volunteers", str(args.volunteers), "--ramp", str(args.ramp_connections),
            "--hold", str(args.hold), "--tag", tag]  # fmt: skip


def run_nodes(cluster: Cluster, args: argparse.Namespace, nodes: int) -> dict[str, Any]:
    cluster.start(nodes)
    fleet = load(cluster.hosts, "vol", *fleet_args(args, f"n{nodes}"))
    try:
        event(fleet, "ready")
        until(lambda: cluster.waiters() >= 0.98 * args.volunteers, "the volunteers waiting", 180)
        result: dict[str, Any] = {"nodes": nodes, "waiting": cluster.waiters()}
        result["idle"] = idle_phase(cluster, args)
        result["generations"] = generations_phase(cluster, args, args.prompts, fleet)
        result["dispatch_ms"] = result["generations"]["dispatch_ms"]
        streams = load(cluster.hosts, "cli", "--streams", str(args.streams), "--tag", f"s{nodes}")
        time.sleep(args.seconds)
        result["streams"] = event(streams, "results", signal.SIGTERM)
        streams.wait()
        if args.ramp:
            result["ramp"] = ramp(cluster, args, fleet)
        result["fleet"] = event(fleet, "results", signal.SIGTERM)
        return result
    finally:
        cluster.hosts.stop(fleet)
        cluster.stop()


def ramp(cluster: Cluster, args: argparse.Namespace, fleet: subprocess.Popen) -> list[Any]:
    """Prompts at rising rates: dispatch latency and each part's share of a core, until the
    latency passes a second or a part uses a whole core."""
    steps = []
    for rate in (float(r) for r in args.ramp.split(",")):
        step = generations_phase(cluster, args, rate, fleet)
        step["first_saturated"] = cluster_bench.first_saturated(step["shares"])
        steps.append(step)
        print(f"  ramp {rate:g}/s: {summary_of(step)}", flush=True)
        if step["first_saturated"] or step["dispatch_ms"].get("p99", 0) > 1000:
            break
    return steps


def failure(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    """Kill one web node (SIGKILL to its process group) during the load; count."""
    nodes = max(int(n) for n in args.nodes.split(","))
    cluster.start(nodes)
    fleet = load(cluster.hosts, "vol", *fleet_args(args, "kill"))
    try:
        event(fleet, "ready")
        until(lambda: cluster.waiters() >= 0.98 * args.volunteers, "the volunteers waiting", 180)
        clients = load(
            cluster.hosts,
            "cli",
            "--prompts",
            str(args.prompts),
            "--streams",
            str(args.streams),
            "--tag",
            "killc",
        )
        timeline, started, victim = [], time.monotonic(), list(cluster.web)[-1]
        killed = None
        while time.monotonic() - started < args.kill_at + args.seconds:
            if killed is None and time.monotonic() - started >= args.kill_at:
                os.killpg(cluster.web[victim].pid, signal.SIGKILL)
                killed = time.monotonic()
            now = round(time.monotonic() - started, 1)
            timeline.append((now, cluster.waiters_per_node(), cluster.balancer_view()))
            time.sleep(1)
        posted = event(clients, "results", signal.SIGTERM)
        clients.wait()
        sent = set(posted["sent_nonces"])
        deadline = time.monotonic() + args.drain
        while True:  # jobs a dead node handed out come back when the reaper takes them back
            served = event(fleet, "snapshot", signal.SIGUSR1)["served_nonces"]
            if sent <= set(served) or time.monotonic() > deadline:
                break
            time.sleep(10)
        return {
            "nodes": nodes,
            "victim": victim,
            "kill_at": args.kill_at,
            "timeline": timeline,
            "prompts_acknowledged": len(sent),
            "served": len(sent & set(served)),
            "lost": sorted(sent - set(served)),
            "duplicated": {n: c for n, c in served.items() if c > 1 and n in sent},
            "prompt_errors": posted["errors"],
            "stream_errors": posted["stream_errors"],
            "streams_done": posted["streams_done"],
            "fleet": event(fleet, "snapshot", signal.SIGUSR1),
        }
    finally:
        cluster.hosts.stop(fleet)
        cluster.stop()


def summary_of(step: dict[str, Any]) -> str:
    shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sorted(step["shares"].items()))
    return f"dispatch {step['dispatch_ms']}, CPU share of a core: {shares}"


def table(results: list[dict[str, Any]]) -> str:
    """The README's table: one column per count of web nodes. CPU per generation is what the
    generations phase cost beyond the volunteers' waiting (the idle phase, same length)."""
    rows: dict[str, list[str]] = {}

    def row(name: str, value: str) -> None:
        rows.setdefault(name, []).append(value)

    for result in results:
        phase, idle = result["generations"], result["idle"]
        count = max(phase["generations"], 1)
        seconds = phase["seconds"]

        def net(part: str, phase=phase, idle=idle, seconds=seconds, count=count) -> float:
            """Milliseconds per generation beyond what waiting costs."""
            waiting = idle["shares"].get(part, 0.0) * seconds
            return 1000 * max(phase["cpu"].get(part, 0.0) - waiting, 0.0) / count

        dispatch, streams = result["dispatch_ms"], result["streams"]["token_delay_ms"]
        post = phase["posted"]["prompt_post_ms"]
        webs = sorted(k for k in phase["cpu"] if k.startswith("web"))
        row("volunteers waiting", f"{result['waiting']:.0f}")
        row("web CPU while they wait (% of a core, all nodes)",
            f"{100 * sum(idle['shares'][k] for k in webs):.1f}")  # fmt: skip
        row("dispatch mean / p99 (ms)", f"{dispatch.get('mean')} / {dispatch.get('p99')}")
        row("prompt POST mean / p99 (ms)", f"{post.get('mean')} / {post.get('p99')}")
        row("streamed token delay mean / p99 (ms)", f"{streams.get('mean')} / {streams.get('p99')}")
        errors = result["streams"]["stream_errors"]
        row("stream errors", json.dumps(errors) if errors else "none")
        row("generations / s", f"{phase['generations'] / seconds:.1f}")
        each = " / ".join(f"{net(k):.1f}" for k in webs)
        row("web CPU per generation, all nodes (each) (ms)", f"{sum(map(net, webs)):.1f} ({each})")
        for part in ("postgres", "redis", "haproxy", "wire"):
            if part in phase["cpu"]:
                row(f"{part} CPU per generation (ms)", f"{net(part):.2f}")
        if "wire" in idle["shares"]:
            row("wire CPU while they wait (% of a core)", f"{100 * idle['shares']['wire']:.1f}")
        row("Redis commands per generation", f"{sum(phase['redis'].values()) / count:.1f}")
        row("WAL bytes per generation", f"{phase['wal'] / count:.0f}")
        if "transactions" in phase:
            waiting = idle["transactions"] * seconds / max(idle["seconds"], 1)
            row("PostgreSQL transactions per generation",
                f"{(phase['transactions'] - waiting) / count:.1f}")  # fmt: skip
    head = "| | " + " | ".join(f"{r['nodes']} web node(s)" for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in rows.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="1,2,3", help="counts of web nodes, one run each")
    parser.add_argument("--volunteers", type=int, default=1000)
    parser.add_argument("--prompts", type=float, default=10, help="prompts per second")
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30, help="length of each phase")
    parser.add_argument("--hold", type=float, default=20, help="seconds a stream's job lasts")
    parser.add_argument("--ramp-connections", type=float, default=200)
    parser.add_argument("--ramp", default="", help="rising prompt rates on the most nodes")
    parser.add_argument("--kill-at", type=float, default=0, help="a node-failure run")
    parser.add_argument("--drain", type=float, default=240, help="seconds to wait for late jobs")
    parser.add_argument("--delay-ms", type=float, default=1.0)
    parser.add_argument("--web-workers", type=int, default=0,
                        help="processes per web node (default: deploy/web.env's)")  # fmt: skip
    parser.add_argument("--json", default="", help="write every figure to this file")
    args = parser.parse_args()
    if args.seconds < 30:  # each phase must hold every volunteer's one re-pop (wait: 30)
        parser.error("--seconds must be 30 or more: the waiting and the generations phases "
                     "must each hold one re-pop of every volunteer")  # fmt: skip
    hosts = Hosts(args.delay_ms)
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as folder:
        try:
            hosts.build_switch()
            for name, octet in (
                ("lb", 10),
                ("web1", 11),
                ("web2", 12),
                ("web3", 13),
                ("db", 20),
                ("redis", 21),
                ("sched", 30),
                ("vol", 40),
                ("cli", 41),
            ):
                hosts.add(name, octet)
            report["delay"] = {"ms": args.delay_ms if hosts.delayed else 0,
                               "by": hosts.delay_method}  # fmt: skip
            print(f"Delay between the hosts: {report['delay']}", flush=True)
            cluster = Cluster(hosts, Path(folder), args.web_workers)
            report["web_workers"] = cluster.web_workers
            print(f"Web processes per node: {cluster.web_workers}", flush=True)
            cluster.start_services()
            counts = [int(n) for n in args.nodes.split(",")] if not args.kill_at else []
            report["runs"] = []
            for nodes in counts:
                keep_ramp = args.ramp if nodes == max(counts) else ""
                result = run_nodes(
                    cluster, argparse.Namespace(**{**vars(args), "ramp": keep_ramp}), nodes
                )
                report["runs"].append(result)
                step = {**result["generations"], "dispatch_ms": result["dispatch_ms"]}
                print(f"{nodes} node(s): {summary_of(step)}", flush=True)
            if report["runs"]:
                print(table(report["runs"]))
            if args.kill_at:
                report["failure"] = failure(cluster, args)
                print(json.dumps({k: v for k, v in report["failure"].items() if k != "fleet"}))
        except BaseException:
            for log in sorted(Path(folder).glob("*.log")):  # what went wrong, before it goes
                print(f"--- {log.name}:\n{log.read_text()[-1500:]}", file=sys.stderr)
            raise
        finally:
            hosts.cleanup()
            if hosts.carried and "delay" in report:  # what the wire carried, if any
                report["delay"]["carried"] = hosts.carried
                print(f"The wire carried: {hosts.carried}", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
