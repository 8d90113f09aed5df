"""Scheduled statistics work, run by django-q2 (`manage.py ensure_schedules` registers it)."""

from __future__ import annotations

import logging

from django.utils import timezone

from stats.rollups import stats_rollup

logger = logging.getLogger(__name__)


def rollup_statistics() -> str:
    """Count the last minutes' jobs before the purge deletes them; fold rows past 30 days."""
    result = stats_rollup(now=timezone.now())
    summary = (
        f"rolled up {result.minutes} minutes into {result.rows} rows, "
        f"folded {result.folded} rows into days"
    )
    logger.info(summary)
    return summary
