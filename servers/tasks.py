"""Scheduled work on servers, run by django-q2 (`manage.py ensure_schedules` registers it).

Each task returns a one-line summary and logs it: counts and ids only, never text.
"""

from __future__ import annotations

import logging

from django.utils import timezone

from servers.suspicion import servers_review
from servers.trust import accounts_promote

logger = logging.getLogger(__name__)


def review_servers() -> str:
    """Pause the servers whose record trips a rule of servers/suspicion.py."""
    paused = servers_review(now=timezone.now())
    summary = f"paused {len(paused)} servers" + (
        f": {', '.join(str(s.pk) for s in paused)}" if paused else ""
    )
    logger.info(summary)
    return summary


def promote_trusted_accounts() -> str:
    """Trust the accounts that earned it (servers/trust.py)."""
    summary = f"trusted {len(accounts_promote(now=timezone.now()))} accounts"
    logger.info(summary)
    return summary
