"""Signs of life of jobs: a job whose server has gone quiet is given back in seconds (issue 25).

A server at work on a job says so: each progress post (generations/progress.py) and each
heartbeat (a progress post without text, every few seconds while a non-streaming job
generates) marks the job alive. The mark is transient, like the progress text: in Redis
(Django's cache) with `REDIS_URL`, else a file per job in the var dir whose modification
time is the mark; never the database, so 200 servers heartbeating cost no writes.

A job whose last sign of life is older than KOBOLDCLUSTER_STALL_SECONDS has stalled (its
server vanished, slept, or its bridge was killed): the reaper gives it back without waiting
for its ttl (`generations.lifecycle.jobs_reap`), and front-end waits notice it sooner
(`generations.waiting.reap_stalled`). A job that never showed a sign of life (a server
that sends neither progress nor heartbeats, e.g. an AI Horde worker) keeps the ttl rule.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.cache import cache

from koboldcluster.var_folders import VarFolder

# How long a mark is remembered: longer than any stall the reaper (every minute) must see.
MARK_KEEP_SECONDS = 600


def stall_seconds() -> float:
    return float(settings.KOBOLDCLUSTER["STALL_SECONDS"])


def mark_alive(job_id: object) -> None:
    """The job's server showed a sign of life now."""
    if _in_cache():
        cache.set(_key(job_id), time.time(), timeout=MARK_KEEP_SECONDS)
        return
    try:
        path = _file(job_id)
        path.touch()
    except FileNotFoundError:  # the directory was removed meanwhile: make it again
        _FOLDER.forget()
        path = _file(job_id)
        path.touch()
    now = time.time()  # the clock the readers compare with (not the file system's)
    os.utime(path, (now, now))


def last_signs(job_ids: Iterable[object]) -> dict[str, float]:
    """The last sign of life (a Unix time) of each of `job_ids` that showed one, by id."""
    ids = [str(job_id) for job_id in job_ids]
    if not ids:
        return {}
    if _in_cache():
        found = cache.get_many([_key(job_id) for job_id in ids])
        return {job_id: found[_key(job_id)] for job_id in ids if _key(job_id) in found}
    signs = {}
    for job_id in ids:
        with contextlib.suppress(FileNotFoundError):
            signs[job_id] = _file(job_id).stat().st_mtime
    return signs


def stalled(jobs: Iterable[tuple[object, datetime]], now: datetime) -> list[object]:
    """Of the processing jobs (id, started) given, those that stalled: started more than
    STALL_SECONDS ago, and quiet for as long after showing a sign of life."""
    quiet = stall_seconds()
    since = now - timedelta(seconds=quiet)
    old = [job_id for job_id, started in jobs if started < since]
    signs = last_signs(old)
    limit = now.timestamp() - quiet
    return [job_id for job_id in old if str(job_id) in signs and signs[str(job_id)] < limit]


def stall_due(jobs: Iterable[tuple[object, datetime]], now: datetime) -> float | None:
    """Seconds until the first of the processing jobs (id, started) given could be judged
    stalled, if none shows a sign of life meanwhile (0 when one is due now); None when none
    showed a sign of life yet (those keep the ttl rule). A wait sleeps until then, so that a
    stall is noticed on time, not at its next periodic check."""
    jobs = list(jobs)
    signs = last_signs(job_id for job_id, _ in jobs)
    quiet = stall_seconds()
    due = [
        max(started.timestamp(), signs[str(job_id)]) + quiet
        for job_id, started in jobs
        if str(job_id) in signs
    ]
    return max(min(due) - now.timestamp(), 0.0) if due else None


def marks_sweep() -> int:
    """Remove the marks older than MARK_KEEP_SECONDS (files; Redis expires its own)."""
    if _in_cache():
        return 0
    return _FOLDER.sweep(MARK_KEEP_SECONDS)


def _in_cache() -> bool:
    """With Redis the marks are in Django's cache, which every node shares."""
    return bool(settings.REDIS_URL)


def _key(job_id: object) -> str:
    return f"alive:{job_id}"


_FOLDER = VarFolder("alive")


def _file(job_id: object) -> Path:
    return _FOLDER.path() / str(uuid.UUID(str(job_id)))
