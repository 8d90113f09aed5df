"""What a running program costs, read from /proc: CPU time, memory, threads and open files.

The benchmarks measure the web server from outside, as an operator would: the user + system
CPU time the kernel charged to its processes (the web server's master and its workers: one process
group, or the processes under one parent), not wall time, so that other work on a shared
machine does not count. Linux only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

PROC = "/proc"


@dataclass(frozen=True)
class Usage:
    """A reading of some processes: CPU seconds so far, resident bytes, threads, open files."""

    cpu: float
    resident: int
    threads: int
    files: int
    processes: int


def parse_stat(text: str) -> list[str]:
    """The fields of a /proc/<pid>/stat line after the command name (which may hold spaces
    and parentheses): field 3 of proc(5), the state, is index 0."""
    return text.rsplit(")", 1)[1].split()


def _stat(pid: int | str) -> list[str] | None:
    try:
        with open(f"{PROC}/{pid}/stat") as stat:
            return parse_stat(stat.read())
    except (OSError, IndexError):
        return None  # gone meanwhile


def group_pids(pgid: int) -> list[int]:
    """The processes of a process group (a server started in a session of its own)."""
    found = []
    for pid in filter(str.isdigit, os.listdir(PROC)):
        fields = _stat(pid)
        if fields is not None and int(fields[2]) == pgid:
            found.append(int(pid))
    return found


def tree_pids(root: int) -> list[int]:
    """`root` and every process descended from it."""
    parents: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir(PROC)):
        fields = _stat(pid)
        if fields is not None:
            parents[int(pid)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        if pid in parents or pid == root:
            found.append(pid)
            frontier.extend(child for child, parent in parents.items() if parent == pid)
    return [pid for pid in found if pid in parents]


def usage(pids: Iterable[int]) -> Usage:
    """CPU (user + system, of every thread, living or ended), memory, threads and open files
    of `pids` together."""
    ticks, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    cpu, resident, threads, files, processes = 0.0, 0, 0, 0, 0
    for pid in pids:
        fields = _stat(pid)
        if fields is None:
            continue
        processes += 1
        cpu += (int(fields[11]) + int(fields[12])) / ticks
        threads += int(fields[17])
        resident += int(fields[21]) * page
        files += _count_files(pid)
    return Usage(cpu, resident, threads, files, processes)


def _count_files(pid: int) -> int:
    try:
        return len(os.listdir(f"{PROC}/{pid}/fd"))
    except OSError:
        return 0


def group_usage(pgid: int) -> Usage:
    return usage(group_pids(pgid))


def group_cpu(pgid: int) -> float:
    """CPU seconds of every process in the group (the web server's master and workers)."""
    return group_usage(pgid).cpu


def percentile(values: Iterator[float] | list[float], share: float) -> float:
    """The `share` (0-1) percentile of `values`, nearest rank; 0 for none."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]
