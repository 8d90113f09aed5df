"""The parts of benchmarks/scripts/bench_cluster.py that are plain logic, kept here to be tested.

The benchmark across hosts (README "Benchmark across hosts") builds test hosts as network
namespaces, runs deploy/'s HAProxy configuration in front of its web nodes and reads what each
part cost. Here: the balancer's configuration made from deploy/haproxy/haproxy.cfg, the
readings of Redis (INFO commandstats) and PostgreSQL (WAL positions), and the summing up.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEPLOY_HAPROXY = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "haproxy.cfg"
NODES_START = "# web nodes"
NODES_END = "# end of web nodes"
SET_BY_BENCH = "# set by bench_cluster"


@dataclass(frozen=True)
class Balancer:
    """What the benchmark changes in deploy/'s configuration: nothing else."""

    nodes: tuple[tuple[str, str], ...]  # (name, "address:port")
    certificate: str  # the PEM file (certificate and key) TLS is served with
    state_dir: str  # where the stats socket goes (the benchmark's own folder)
    maxconn: int | None = None  # lower than deploy/'s, for a machine with fewer open files


def render_haproxy(template: str, balancer: Balancer) -> str:
    """deploy/haproxy/haproxy.cfg with the benchmark's web nodes between the markers, its
    certificate, its stats socket and (if given) a lower maxconn; every other line as
    written."""
    lines, out, inside, replaced = template.splitlines(), [], False, False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(NODES_START):
            out.append(line)
            indent = line[: len(line) - len(line.lstrip())]
            out += [f"{indent}server {name} {address}" for name, address in balancer.nodes]
            inside, replaced = True, True
            continue
        if stripped == NODES_END:
            inside = False
        if inside:
            continue
        if "ssl crt " in line and SET_BY_BENCH in line:
            line = re.sub(r"ssl crt \S+", f"ssl crt {balancer.certificate}", line)
        if stripped.startswith("maxconn ") and SET_BY_BENCH in line and balancer.maxconn:
            line = re.sub(r"maxconn \d+", f"maxconn {balancer.maxconn}", line)
        if stripped.startswith("stats socket "):
            line = re.sub(
                r"stats socket \S+", f"stats socket {balancer.state_dir}/admin.sock", line
            )
        out.append(line)
    if not replaced or inside:
        raise ValueError(f"the template has no '{NODES_START}' ... '{NODES_END}' block")
    return "\n".join(out) + "\n"


def commandstats_calls(info: str) -> dict[str, int]:
    """Calls per command from Redis's `INFO commandstats` text."""
    calls = {}
    for line in info.splitlines():
        found = re.match(r"cmdstat_([^:]+):calls=(\d+)", line.strip())
        if found:
            calls[found.group(1)] = int(found.group(2))
    return calls


def calls_between(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands run between two readings (commands new in `after` counted whole)."""
    spent = {name: count - before.get(name, 0) for name, count in after.items()}
    return {name: count for name, count in sorted(spent.items()) if count > 0}


def wal_bytes(before: str, after: str) -> int:
    """Bytes of WAL between two `pg_current_wal_lsn()` readings (`X/Y`, hexadecimal)."""
    return _lsn(after) - _lsn(before)


def _lsn(text: str) -> int:
    high, low = text.strip().split("/")
    return (int(high, 16) << 32) + int(low, 16)


def per_generation(total: float, generations: int) -> float | None:
    return total / generations if generations else None


def first_saturated(shares: dict[str, float], limit: float = 0.9) -> str | None:
    """The part whose processes used the largest share of a core, if it reached `limit`
    (what breaks first: one process at a whole core can go no faster)."""
    if not shares:
        return None
    name, share = max(shares.items(), key=lambda item: item[1])
    return name if share >= limit else None


def haproxy_status(csv: str, backend: str = "web") -> dict[str, str]:
    """Each server's status (UP, DOWN, ...) in `backend`, from HAProxy's stats as CSV."""
    lines = csv.splitlines()
    if not lines or not lines[0].startswith("# "):
        return {}
    names = lines[0][2:].split(",")
    found = {}
    for line in lines[1:]:
        row = dict(zip(names, line.split(","), strict=False))
        if row.get("pxname") == backend and row.get("svname") not in ("BACKEND", "FRONTEND"):
            found[row["svname"]] = row.get("status", "")
    return found


def merge_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for count in counts:
        for name, value in count.items():
            merged[name] = merged.get(name, 0) + value
    return merged
