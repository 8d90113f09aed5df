"""Scheduled work on the queue, run by django-q2 (`manage.py ensure_schedules` registers it).

Each task returns a one-line summary (django-q2 keeps it with the task's result in the admin)
and logs the same line: counts only, never text.
"""

from __future__ import annotations

import logging

from django.utils import timezone

from generations.canaries import canaries_compare, canaries_start
from generations.lifecycle import jobs_reap, prompts_purge
from generations.liveness import marks_sweep
from generations.progress_store import progress_sweep

logger = logging.getLogger(__name__)


def purge_expired_prompts() -> str:
    """Wipe the prompts nobody has used for PROMPT_EXPIRY_SECONDS, with their generations."""
    result = prompts_purge(now=timezone.now())
    summary = f"purged {result.prompts} expired prompts with {result.jobs} jobs"
    logger.info(summary)
    return summary


def reap_overdue_jobs() -> str:
    """Give the slots of jobs whose server missed the deadline or stalled back to the queue."""
    summary = f"reaped {jobs_reap(now=timezone.now())} overdue or stalled jobs"
    # Progress of jobs that ended without a word (files without Redis; Redis expires its own).
    progress_sweep()
    marks_sweep()
    logger.info(summary)
    return summary


def run_canaries() -> str:
    """Compare the canary rounds that are in, then start those due (generations/canaries.py)."""
    now = timezone.now()
    compared = canaries_compare(now=now)
    started = canaries_start(now=now)
    summary = f"compared {compared} canary rounds, started {started}"
    logger.info(summary)
    return summary
