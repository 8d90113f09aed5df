"""Trust: new accounts are untrusted; an account earns trust with enough delivered jobs over
enough days without a pause, or an administrator gives it.

Trust matters where a requester asks for it (`trusted_workers`, generations/matching.py),
for the number of servers an account may run (servers/services.py) and for batching
control (generations/intake.py). A flagged account (servers/suspicion.py) is never promoted.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from accounts.models import User
from accounts.selectors import user_totals
from servers.models import Server

logger = logging.getLogger(__name__)


def accounts_promote(*, now: datetime | None = None) -> list[int]:
    """Trust the accounts that earned it; return their ids.

    Earned: registered at least TRUST_MIN_DAYS ago, TRUST_MIN_JOBS generations delivered by
    its servers (the ledger's count), no pause of any of its servers in TRUST_MIN_DAYS and
    none paused now, not flagged."""
    now = now or timezone.now()
    limits = settings.KOBOLDCLUSTER
    since = now - timedelta(days=limits["TRUST_MIN_DAYS"])
    candidates = list(
        User.objects.filter(
            kind=User.Kind.REGISTERED, trusted=False, flagged=False, date_joined__lte=since
        )
        .filter(Q(last_paused_at__isnull=True) | Q(last_paused_at__lte=since))
        .exclude(servers__paused=True)
        .filter(servers__isnull=False)
        .distinct()
        .values_list("pk", flat=True)
    )
    if not candidates:
        return []
    totals = user_totals(candidates)
    earned = [
        pk
        for pk in candidates
        if pk in totals and totals[pk].fulfilments >= limits["TRUST_MIN_JOBS"]
    ]
    if earned:
        User.objects.filter(pk__in=earned, trusted=False, flagged=False).update(trusted=True)
        logger.info("%s accounts trusted: %s", len(earned), earned)
    return earned


def server_standing(server: Server) -> dict:
    """What anyone may see of a server's standing (no text, no ratings' reasons)."""
    jobs = server.rec_jobs
    ended_well = jobs - server.rec_failed - server.rec_abandoned
    return {
        "trusted": bool(server.owner.trusted),
        "paused": server.paused,
        "paused_reason": server.paused_reason if server.paused else "",
        "success_rate": round(ended_well / jobs, 3) if jobs >= 1 else None,
        "tokens_per_second": round(server.speed, 1),
    }
