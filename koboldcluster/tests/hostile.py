"""What the hostile-input tests send and how they measure the server (issue 23).

`server_cpu_seconds` reads the CPU time of every thread of every process of a server's
process group (/proc/<pid>/task/<tid>/schedstat: nanoseconds on a CPU): the web server's
main process, its worker, the worker's event loop and sync threads. Read before and after a
request, it is that request's CPU (plus the idle server's own ticks, a few microseconds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MEGABYTE = "x" * 1_000_000
LONG_NAME = "a" + "-q4" * 30_000  # the suffix stripping's worst case, 90,001 characters
HUGE = 10**400
MANY = 10_000


def deep(levels: int = 100_000) -> str:
    """JSON nested `levels` deep (Python's parser gives up at about 1,000)."""
    return "[" * levels + "]" * levels


def server_cpu_seconds(pgid: int) -> float:
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            for task in (proc / "task").iterdir():
                total += int((task / "schedstat").read_text().split()[0])
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue  # gone meanwhile
    return total / 1e9


def _each_text(body: dict[str, Any], fields: list[str], value: Any) -> list[dict[str, Any]]:
    return [{**body, field: value} for field in fields]


CHAT = [{"role": "user", "content": "Hi"}]


def hostile_requests(job_id: str) -> list[tuple[str, str, Any]]:
    """(method, path, JSON body or raw bytes): every text field of every face a megabyte,
    lists of 10,000, numbers past any column, long model names, JSON nested past the parser."""
    completion = {"prompt": "Hi", "max_tokens": 4}
    chat = {"messages": CHAT, "max_tokens": 4}
    kobold = {"prompt": "Hi", "max_length": 4}
    original = {"prompt": "Hi", "params": {"max_length": 16}}
    pop = {"username": "bob", "password": "s3rver-pass", "name": "bob-1", "model": "m"}
    submit = {"id": job_id, "password": "s3rver-pass", "generation": "x"}
    horde = {"prompt": "Hi", "params": {"max_length": 16}}
    horde_pop = {"name": "carol-1", "models": ["m"], "max_length": 80}
    cases: list[tuple[str, str, Any]] = []
    for path, body, texts, lists in [
        ("/v1/completions", completion, ["model", "prompt", "stop", "user"], ["stop", "prompt"]),
        ("/v1/chat/completions", chat, ["model", "user"], ["messages", "stop"]),
        (
            "/api/v1/generate",
            kobold,
            ["prompt", "genkey", "memory"],
            ["stop_sequence", "sampler_order"],
        ),
        ("/api/extra/tokencount", {"prompt": "Hi"}, ["prompt"], ["prompt"]),
        ("/api/extra/generate/check", {"genkey": "k"}, ["genkey"], []),
        ("/api/extra/abort", {"genkey": "k"}, ["genkey"], []),
        (
            "/generate/prompt",
            original,
            ["prompt", "username", "password", "softprompt"],
            ["models", "workers"],
        ),
        (
            "/generate/pop",
            pop,
            ["username", "password", "name", "model", "bridge_agent"],
            ["models", "priority_usernames", "softprompts"],
        ),
        ("/generate/submit", submit, ["id", "password", "generation"], ["gen_metadata"]),
        ("/generate/progress", {**submit, "text": "x"}, ["text"], []),
        ("/api/v2/generate/text/async", horde, ["prompt", "softprompt"], ["models", "workers"]),
        (
            "/api/v2/generate/text/pop",
            horde_pop,
            ["name", "bridge_agent"],
            ["models", "priority_usernames", "softprompts"],
        ),
    ]:
        cases += [("POST", path, b) for b in _each_text(body, texts, MEGABYTE)]
        cases += [("POST", path, b) for b in _each_text(body, lists, ["x"] * MANY)]
        cases += [("POST", path, b) for b in _each_text(body, lists, [MEGABYTE[:1000]] * MANY)]
        numbers = [k for k, v in body.items() if isinstance(v, int)] + ["n", "seed"]
        cases += [("POST", path, b) for b in _each_text(body, numbers, HUGE)]
        cases += [("POST", path, b) for b in _each_text(body, numbers, 1e308)]
        cases.append(("POST", path, {**body, "model": LONG_NAME, "models": [LONG_NAME]}))
        cases.append(("POST", path, ('{"prompt": ' + deep() + "}").encode()))
        cases.append(("POST", path, ('{"params": {"n": ' + deep(900) + "}}").encode()))
    for path in (
        "/v1/models",
        "/api/v1/model",
        "/api/v1/config/max_length",
        "/api/extra/version",
        "/servers",
        "/models",
        "/usage",
        "/contributions",
        "/",
        "/status/live",
        "/metrics",
        f"/generate/prompt/{LONG_NAME}",
        f"/api/v2/generate/text/status/{'x' * 100_000}",
        f"/?refresh={'9' * 5000}",
        f"/api/v2/users?page={'9' * 5000}",
    ):
        cases.append(("GET", path, None))
    return cases
