"""The direct lane run on the event loop's own thread, where the database is SQLite (issue 27).

Through HTTP every request of the direct lane (koboldcluster/direct.py) made two more thread
hand-offs than its work needs: from the event loop to the sync thread and back, each a wake-up
(a futex, then asyncio's self-pipe: a write, an epoll return, a read) and a thread starting on
caches the other threads have used. On SQLite that work is local and short: its statements
read and write a file in this machine's page cache, with no network round trip to wait for,
so the loop loses nothing by doing it itself. Measured through HTTP (`manage.py benchmark
--http`, docs/benchmarks.md "Through HTTP"), it takes about a sixth off a generation's CPU.
On PostgreSQL the lane stays on the sync thread: each statement waits a network round trip,
which on the loop would hold every other request of the process.

The loop's thread gets a database connection of its own, kept between requests as the sync
thread keeps its own (CONN_MAX_AGE): the lane runs in one context of its own, so what Django
keeps per context (its caches' handles) is made once, not per request. Django's guard against
synchronous database calls in async code is asked only while the lane runs, and it runs with
no loop marked as running: the lane awaits nothing, so nothing can be scheduled behind its
back, and the loop is marked again before anything else of the loop runs.

Another process (a second web worker, the scheduler) may hold SQLite's write lock: the loop
then waits for it as the sync thread would (the connection's timeout), and so does everything
else on the loop meanwhile (held pops' wake-ups, streams). The cluster's own write
transactions hold it for milliseconds; the longest are the purge's, a batch of 100 expired
prompts at a time and, once a minute, the checkpoint that truncates the write-ahead log
(generations/stores/sqlite.py), as long as the disk takes to write it back. Nothing the sync thread
does inside a transaction waits for the loop (nothing calls async_to_sync), so the two
threads of one process cannot wait for each other.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from typing import Any

from django.db import connection

_CONTEXT = contextvars.Context()


def applies() -> bool:
    """Whether the lane runs on the loop: the database is SQLite."""
    return connection.vendor == "sqlite"


def run(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` on this thread, in the lane's context, with no loop marked running."""
    loop = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    try:
        return _CONTEXT.run(function, *args)
    finally:
        asyncio.events._set_running_loop(loop)
