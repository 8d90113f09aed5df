"""Scheduled work on the ledger, run by django-q2 (`manage.py ensure_schedules` registers it)."""

from __future__ import annotations

import logging

from django.utils import timezone

from accounts.ledger import ledger_fold

logger = logging.getLogger(__name__)


def fold_ledger() -> str:
    """Fold settled ledger entries into the balances, so that readers add only a short tail."""
    summary = f"folded {ledger_fold(now=timezone.now())} ledger entries"
    logger.info(summary)
    return summary
