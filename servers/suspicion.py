"""Suspicion with consequences: a server whose record (servers/records.py) trips a rule is
paused, and an account whose servers were paused repeatedly is flagged.

Each rule reads shares of the record, after a minimum of evidence, against a threshold that
is a setting (README "Trust and quality" gives each one's reason). A paused server gets only
its owner's own requests (generations/queue.py); its pops say why, and its bridge prints it.
The rules are reviewed every minute for the servers that worked (`servers_review`, a
scheduled task) and at once after a rating or a canary round: the hot submit path only
counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import User
from servers.models import Server
from servers.records import cleared, speed_cap
from servers.services import servers_changed

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rule:
    name: str
    # The share it reads, and the evidence that share rests on (None: not enough yet).
    share: Callable[[Server], float | None]
    threshold: str  # the setting
    reason: Callable[[Server, float], str]


def _of_jobs(counter: str) -> Callable[[Server], float | None]:
    def share(server: Server) -> float | None:
        if server.rec_jobs < settings.KOBOLDCLUSTER["SUSPICION_MIN_JOBS"]:
            return None
        return getattr(server, counter) / server.rec_jobs

    return share


def _failures(server: Server) -> float | None:
    if server.rec_jobs < settings.KOBOLDCLUSTER["SUSPICION_MIN_JOBS"]:
        return None
    return (server.rec_failed + server.rec_abandoned) / server.rec_jobs


def _bad_ratings(server: Server) -> float | None:
    rated = server.rec_good + server.rec_bad
    if rated < settings.KOBOLDCLUSTER["SUSPICION_MIN_RATINGS"]:
        return None
    return server.rec_bad / rated


def _canaries(server: Server) -> float | None:
    compared = server.rec_canary_agreed + server.rec_canary_disagreed
    if compared < settings.KOBOLDCLUSTER["SUSPICION_MIN_CANARIES"]:
        return None
    return server.rec_canary_disagreed / compared


def _pct(share: float) -> str:
    return f"{share:.0%}"


RULES: tuple[Rule, ...] = (
    Rule(
        "too_fast",
        _of_jobs("rec_too_fast"),
        "SUSPICION_TOO_FAST_SHARE",
        lambda s, x: (
            f"{_pct(x)} of its recent jobs were faster than "
            f"{speed_cap(s.model) or 0:g} tokens/s, more than a model the size of "
            f"'{s.model}' can generate"
        ),
    ),
    Rule(
        "empty",
        _of_jobs("rec_empty"),
        "SUSPICION_EMPTY_SHARE",
        lambda s, x: f"{_pct(x)} of its recent results were empty or nearly empty",
    ),
    Rule(
        "repeated",
        _of_jobs("rec_repeated"),
        "SUSPICION_REPEATED_SHARE",
        lambda s, x: f"{_pct(x)} of its recent results repeated a result of another prompt",
    ),
    Rule(
        "failed",
        _failures,
        "SUSPICION_FAILED_SHARE",
        lambda s, x: f"{_pct(x)} of its recent jobs were given back or timed out",
    ),
    Rule(
        "bad_ratings",
        _bad_ratings,
        "SUSPICION_BAD_RATINGS_SHARE",
        lambda s, x: f"{_pct(x)} of the recent ratings of its results were bad",
    ),
    Rule(
        "canaries",
        _canaries,
        "SUSPICION_CANARY_SHARE",
        lambda s, x: (
            f"answers unlike its model: {_pct(x)} of its recent canary answers "
            "disagreed with the other servers of the same model"
        ),
    ),
)
RULE_NAMES = tuple(rule.name for rule in RULES)


def suspicion_of(server: Server) -> tuple[str, str] | None:
    """The first rule `server`'s record trips, as (rule, reason), or None."""
    for rule in RULES:
        share = rule.share(server)
        if share is not None and share > settings.KOBOLDCLUSTER[rule.threshold]:
            return rule.name, rule.reason(server, share)
    return None


def servers_review(
    *, server_ids: Iterable[object] | None = None, now: datetime | None = None
) -> list[Server]:
    """Pause the servers (those of `server_ids`, else every one that worked lately) whose
    record trips a rule; return those paused."""
    now = now or timezone.now()
    servers = Server.objects.filter(paused=False)
    if server_ids is not None:
        servers = servers.filter(pk__in=list(server_ids))
    else:
        stale = timedelta(seconds=settings.KOBOLDCLUSTER["SERVER_STALE_SECONDS"])
        servers = servers.filter(last_check_in__gte=now - stale - timedelta(hours=1))
    paused = []
    for server in servers:
        found = suspicion_of(server)
        if found is not None and server_pause(server=server, reason=found[1], now=now):
            paused.append(server)
    return paused


def server_pause(*, server: Server, reason: str, now: datetime | None = None) -> bool:
    """Pause `server` for `reason` and count it against its owner (flagged after
    FLAG_AFTER_PAUSES, which also takes the owner's trust). False if it was paused already."""
    now = now or timezone.now()
    with transaction.atomic():
        moved = Server.objects.filter(pk=server.pk, paused=False).update(
            paused=True, paused_reason=reason[:300], paused_at=now
        )
        if not moved:
            return False
        User.objects.filter(pk=server.owner_id).update(pauses=F("pauses") + 1, last_paused_at=now)
        flagged = User.objects.filter(
            pk=server.owner_id, pauses__gte=settings.KOBOLDCLUSTER["FLAG_AFTER_PAUSES"]
        ).update(flagged=True, trusted=False)
    servers_changed()
    logger.warning("server %s paused: %s", server.pk, reason)
    if flagged:
        logger.warning("account %s flagged: its servers were paused repeatedly", server.owner_id)
    return True


def server_unpause(*, server_id: object) -> bool:
    """An administrator's all clear: the server works again, with a fresh record (the old
    one would pause it again at once). The owner's pause count stays."""
    moved = Server.objects.filter(pk=server_id, paused=True).update(
        paused=False, paused_reason="", paused_at=None, **cleared()
    )
    servers_changed()
    return bool(moved)
