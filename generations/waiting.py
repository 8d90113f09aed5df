"""Waiting for a prompt inside an HTTP request, without holding a thread while it waits.

The KoboldAI and OpenAI APIs answer with the generation itself, so their views wait for
the prompt to be done (giving back its jobs that stalled: `reap_stalled`). The wait is a
coroutine: under ASGI thousands of callers wait on one event loop, and only each status
check borrows a thread for a moment.
"""

from __future__ import annotations

import asyncio
import math
from datetime import timedelta

from asgiref.sync import sync_to_async
from django.utils import timezone

from generations.lifecycle import stalled_jobs_reap
from generations.liveness import stall_due, stall_seconds
from generations.models import Job
from generations.status import PromptStatus, prompt_status
from koboldcluster import shutdown, wakeups

# A wake-up (a job of the prompt finished or failed, or it was cancelled) ends each wait at
# once, and so does the moment a job of it could have stalled (`stall_check_in`); the status
# is read again at least this often, so a lost wake-up only delays.
RECHECK_SECONDS = 5.0


async def prompt_wait_done(prompt_id: object, timeout: float) -> PromptStatus | None:
    """The prompt's status once it is done (delivered, cancelled or faulted), or None when
    `timeout` seconds pass first. Every check keeps the prompt alive, as a poll does."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    # Listening from before the first read: a change between the read and the wait wakes it.
    async with wakeups.listening(wakeups.topic_for_prompt(prompt_id)) as wake:
        while True:
            status = await sync_to_async(prompt_status)(prompt_id=prompt_id)
            if status.done:
                return status
            await reap_stalled(status)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            stall = await stall_check_in(status)
            await wake.wait(min(RECHECK_SECONDS, remaining, stall))
            if shutdown.is_stopping():
                raise shutdown.ServerStopping()


# Past a job's stall time, the check waits this much more: the stall is judged on marks
# strictly older than STALL_SECONDS.
STALL_MARGIN_SECONDS = 0.05


async def stall_check_in(status: PromptStatus) -> float:
    """Seconds until one of the prompt's processing jobs could be judged stalled (a status
    check then gives it back): the wait wakes on time instead of up to RECHECK_SECONDS late.
    Costs a read of the marks (a file's time, or one Redis read), no statement; infinite
    without a processing job that showed a sign of life."""
    processing = [(job.id, job.started) for job in status.jobs if job.state == Job.State.PROCESSING]
    if not processing:
        return math.inf
    due = await sync_to_async(stall_due)(processing, timezone.now())
    return math.inf if due is None else due + STALL_MARGIN_SECONDS


async def reap_stalled(status: PromptStatus) -> None:
    """Give back the prompt's jobs whose servers went quiet (generations/liveness.py), so a
    waiting client does not wait for the reaper; nothing to do (no thread, no statement)
    unless a job has been processing for longer than the stall time."""
    now = timezone.now()
    quiet = timedelta(seconds=stall_seconds())
    if any(job.state == Job.State.PROCESSING and job.started < now - quiet for job in status.jobs):
        await sync_to_async(stalled_jobs_reap)(prompt_id=status.prompt.id, jobs=status.jobs)
