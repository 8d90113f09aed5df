"""The life cycle around the queue: failed and overdue jobs give their slots back, expired
prompts are wiped.

A slot comes back when its server gives up (submit's faulted path) or misses its deadline or
stalls (`jobs_reap`, every minute); generations/handover.py gives it back, continued from the
job's text so far when there is some. `prompts_purge` deletes expired prompts with all their
text (every minute); the ledger keeps its counts, never text.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.utils import timezone

from generations.handover import job_give_back
from generations.liveness import stall_seconds, stalled
from generations.models import Job, Prompt
from generations.stores import store

logger = logging.getLogger(__name__)

# Expired prompts deleted per transaction: a backlog is purged in many short transactions,
# so that it never holds the write lock (SQLite) for long.
PURGE_BATCH = 100


def jobs_reap(*, now: datetime | None = None) -> int:
    """Abandon the jobs past their deadline, and those that stalled; return how many.

    A server that vanished never submits. Its job counts as a failure of the prompt (the
    MAX_JOB_FAILURES-th faults it) and against the server. Its result is still accepted if it
    arrives before the slot is handed out again (`_accept_late`). A job stalled when its
    server showed signs of life and then went quiet for STALL_SECONDS (generations/liveness.py):
    it is given back without waiting for its deadline.
    """
    now = now or timezone.now()
    overdue = Job.objects.filter(state=Job.State.PROCESSING, deadline__lt=now)
    rows = list(overdue.values_list("id", "prompt_id", "server_id"))
    listed = {row[0] for row in rows}
    rows += [row for row in _stalled_rows(now) if row[0] not in listed]
    return sum(_abandon(*row, now=now) for row in rows)


def stalled_jobs_reap(*, prompt_id: object, jobs: list[Job], now: datetime | None = None) -> int:
    """Abandon those of a prompt's `jobs` (as its status read them) that stalled; how many.

    Front-end waits call it each time they read their prompt's status: costs nothing (no
    statement) unless a processing job is older than STALL_SECONDS."""
    now = now or timezone.now()
    processing = [(job.id, job.started) for job in jobs if job.state == Job.State.PROCESSING]
    servers = {job.id: job.server_id for job in jobs}
    return sum(
        _abandon(job_id, prompt_id, servers[job_id], now=now, why="stalled")
        for job_id in stalled(processing, now)
    )


def _stalled_rows(now: datetime) -> list[tuple[object, object, object]]:
    """(id, prompt, server) of the processing jobs that stalled."""
    old = Job.objects.filter(
        state=Job.State.PROCESSING, started__lt=now - timedelta(seconds=stall_seconds())
    ).values_list("id", "started", "prompt_id", "server_id")
    candidates = {row[0]: row for row in old}
    quiet = stalled([(job_id, row[1]) for job_id, row in candidates.items()], now)
    return [(job_id, candidates[job_id][2], candidates[job_id][3]) for job_id in quiet]


def _abandon(
    job_id: object, prompt_id: object, server_id: object, *, now: datetime, why: str = "reaped"
) -> int:
    """Give one processing job's slot back (1), unless it ended meanwhile (0); its text so
    far, if any, is kept and continued (generations/handover.py)."""
    # Only from processing: the server may have submitted or failed it a moment ago.
    if not job_give_back(
        job_id=job_id,
        prompt_id=prompt_id,
        server_id=server_id,
        state=Job.State.ABANDONED,
        now=now,
    ):
        return 0
    logger.info("job %s of prompt %s %s: abandoned by server %s", job_id, prompt_id, why, server_id)
    return 1


@dataclass(frozen=True)
class PurgeResult:
    prompts: int
    jobs: int


def prompts_purge(*, now: datetime | None = None) -> PurgeResult:
    """Delete the expired prompts with their jobs: all of their text, and nothing of the ledger.

    Expired prompts are already invisible to every read; this makes them gone. The ledger
    keeps its entries (they hold job ids as plain values, not foreign keys).
    """
    now = now or timezone.now()
    expired = Prompt.objects.filter(expires_at__lte=now)
    prompts = jobs = 0
    while True:
        with transaction.atomic():
            batch = list(expired.order_by("expires_at").values_list("id", flat=True)[:PURGE_BATCH])
            if not batch:
                break
            # On PostgreSQL, lock the jobs before their prompts, in the order submit and the
            # reaper take them: the other order deadlocks with a submit in flight. Then check
            # again, under lock, that nothing revived a prompt since the first read.
            list(Job.objects.select_for_update().filter(prompt_id__in=batch).values_list("id"))
            batch = list(
                expired.select_for_update().filter(id__in=batch).values_list("id", flat=True)
            )
            # Cascades to the jobs and model rows. only("id"): the cascade loads the prompts
            # it deletes, and has no use for their text.
            _, deleted = Prompt.objects.filter(id__in=batch).only("id").delete()
            prompts += deleted.get(Prompt._meta.label, 0)
            jobs += deleted.get(Job._meta.label, 0)
    if prompts:
        store().forget_deleted_text(prompts)
    return PurgeResult(prompts=prompts, jobs=jobs)
