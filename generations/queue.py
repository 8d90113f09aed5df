"""The queue: each of a prompt's `n` slots goes to exactly one server.

`job_pop` is a
server's whole pop: who it is, its check-in, its priority users and the claim of the best
prompt it may serve (`generations.matching`). A claim is one conditional UPDATE
(`waiting = waiting - 1 … AND waiting > 0`) and the job's INSERT in the same transaction
(`generations/claims.py`; on PostgreSQL, for one job, a single statement: a data-modifying
CTE, `generations/stores/postgresql.py`), so
under any interleaving a slot goes to exactly one server, on SQLite (writers serialised by
BEGIN IMMEDIATE) and PostgreSQL (row locks; READ COMMITTED re-checks the WHERE clause).
An idle pop's answer is remembered briefly per server profile until the queue changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.utils import timezone

from accounts.identity import priority_user_ids
from generations import events
from generations.claims import CLAIM_RETURNS
from generations.matching import (
    QUEUE_ORDER_SQL,
    QUEUED_SQL,
    REASONS,
    PromptFacts,
    ServerProfile,
    barring_reason,
    servable_sql,
    skipped_sql,
)
from generations.models import Job, prompt_lifetime
from generations.sql import dt_param, fetch, placeholders
from generations.stores import store
from koboldcluster.errors import Forbidden
from servers.models import Server
from servers.services import CheckIn, Credentials, server_for_pop, server_leave

logger = logging.getLogger(__name__)

# Claims retried when racing pops took every candidate first (PostgreSQL only: on SQLite a
# claim runs under the database's write lock and cannot lose a race).
POP_ROUNDS = 16


@dataclass
class PopResult:
    jobs: list[Job] = field(default_factory=list)
    ttl: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    # Why the server is paused (README "Trust and quality"): said when it gets no job.
    paused_reason: str = ""
    # Filled by job_pop, for a waiting pop's further tries (`jobs_claim`).
    server: Server | None = None
    first_users: set[int] = field(default_factory=set)

    @property
    def job(self) -> Job | None:
        return self.jobs[0] if self.jobs else None


def job_pop(
    *,
    credentials: Credentials,
    check_in: CheckIn,
    priority_usernames: Iterable[str] = (),
    amount: int = 1,
    leaving: bool = False,
    now: datetime | None = None,
) -> PopResult:
    """A server's pop: identify it, check it in, and claim work for it (`jobs_claim`).
    A `leaving` server (its bridge stops) is identified and checked out instead: no job."""
    now = now or timezone.now()
    server = server_for_pop(credentials=credentials, check_in=check_in, now=now)
    if leaving:
        server_leave(server=server, now=now)
        return PopResult(server=server)
    first = priority_user_ids(priority_usernames)
    result = jobs_claim(server=server, priority_user_ids=first, amount=amount, now=now)
    result.server, result.first_users = server, first
    return result


@dataclass(frozen=True)
class _IdleAnswer:
    epoch: int
    until: float
    skipped: dict[str, int]


# Idle answers by (profile, first users, owner only); bounded, forgotten when the queue changes.
_idle: dict[tuple, _IdleAnswer] = {}
_IDLE_MAX = 4096


def jobs_claim(
    *,
    server: Server,
    priority_user_ids: Iterable[int] = (),
    amount: int = 1,
    now: datetime | None = None,
) -> PopResult:
    """Claim up to `amount` slots of the best prompt `server` can serve, or say why there is none.

    The server's owner and its priority users come first, then everyone by sort_key. Several
    slots are all of one prompt (the AI Horde's batching). A server in maintenance or paused
    gets only its owner's prompts; with none, maintenance answers 403 `WorkerMaintenance`
    with its message, and a paused server quietly gets nothing. `server.owner` must be loaded.
    """
    now = now or timezone.now()
    profile = ServerProfile.of(server)
    owner_only = server.maintenance or server.paused
    first = (
        (server.owner_id,) if owner_only else tuple(sorted({server.owner_id, *priority_user_ids}))
    )
    key = (profile, first, owner_only)
    idle = _idle.get(key)
    if idle is None or idle.epoch != events.queue_epoch() or idle.until < time.monotonic():
        jobs = _claim(profile, server, first, owner_only, amount, now)
        if jobs:
            return PopResult(jobs=jobs, ttl=jobs[0].ttl)
        idle = _remember_idle(key, {} if owner_only else _skipped(profile, now))
    if server.maintenance:
        raise Forbidden(
            server.maintenance_msg
            or f"The server '{server.name}' is in maintenance: it only gets its owner's "
            "requests. Its owner or an administrator can end the maintenance.",
            rc="WorkerMaintenance",
        )
    if server.paused:
        return PopResult(paused_reason=paused_notice(server))
    return PopResult(skipped=dict(idle.skipped))


def paused_notice(server: Server) -> str:
    """What a paused server's pop says, for its bridge to print in one line."""
    why = server.paused_reason or "paused by an administrator"
    return (
        f"The server '{server.name}' is paused ({why}): it gets only its owner's requests. "
        "Check that its backend serves the model it advertises and answers in full, then "
        "ask the cluster's administrator to clear the pause (README: Trust and quality)."
    )


def _forget_idle_answers(prompt: PromptFacts, committed: bool) -> None:
    """A new prompt: forget the idle answers of the server profiles that could serve it
    (again once it is committed), and count it once in the others' skipped reasons."""
    for key, answer in list(_idle.items()):
        profile, _, owner_only = key
        reason = barring_reason(prompt, profile)
        if reason is None and (not owner_only or prompt.user_id == profile.owner_id):
            _idle.pop(key, None)
        elif reason is not None and answer.skipped and not committed:
            skipped = {**answer.skipped, reason: answer.skipped[reason] + 1}
            _idle[key] = _IdleAnswer(answer.epoch, answer.until, skipped)


events.on_new_prompt(_forget_idle_answers)


def _remember_idle(key: tuple, skipped: dict[str, int]) -> _IdleAnswer:
    # Read the epoch before answering: a change that lands meanwhile must not be hidden.
    seconds = settings.KOBOLDCLUSTER["IDLE_POP_CACHE_SECONDS"]
    answer = _IdleAnswer(events.queue_epoch(), time.monotonic() + seconds, skipped)
    if seconds > 0:
        if len(_idle) >= _IDLE_MAX:
            _idle.clear()
        _idle[key] = answer
    return answer


def _claim(
    profile: ServerProfile,
    server: Server,
    first: tuple[int, ...],
    owner_only: bool,
    amount: int,
    now: datetime,
) -> list[Job]:
    servable, servable_params = servable_sql(profile)
    pick = f"SELECT p.id FROM generations_prompt p WHERE {QUEUED_SQL} AND {servable}"
    ordered = f"ORDER BY {QUEUE_ORDER_SQL} LIMIT 1"
    now_p = dt_param(now)
    first_pick = f"{pick} AND p.user_id IN ({placeholders(first)}) {ordered}"
    picks, pick_params = f"({first_pick})", [now_p, *servable_params, *first]
    if not owner_only:
        picks = f"COALESCE({picks}, ({pick} {ordered}))"
        pick_params += [now_p, *servable_params]
    claim = (
        "UPDATE generations_prompt SET waiting = waiting - 1, last_activity = %s, "
        f"expires_at = %s WHERE id = {picks} AND state = 'live' AND waiting > 0 "
        f"AND expires_at > %s RETURNING {CLAIM_RETURNS}"
    )
    params = [now_p, dt_param(now + prompt_lifetime()), *pick_params, now_p]
    db = store()
    for _ in range(POP_ROUNDS):
        jobs = db.claim(claim, params, server, amount, now)
        if jobs:
            break
        # Nothing claimed: nothing to serve, or (PostgreSQL) a racing pop took the slot of
        # the prompt we picked between our pick and our update. Only the latter tries again.
        if not db.lost_race(picks, pick_params):
            return []
    else:
        return []
    logger.info(
        "%s jobs of prompt %s popped by server %s: %s",
        len(jobs),
        jobs[0].prompt_id,
        server.id,
        " ".join(str(job.id) for job in jobs),
    )
    return jobs


def _skipped(profile: ServerProfile, now: datetime) -> dict[str, int]:
    """Counts of waiting prompts this server cannot serve, by the first reason that bars it."""
    sql, params = skipped_sql(profile)
    counts = fetch(sql, [*params, dt_param(now)])[0]
    return {reason: int(count) for reason, count in zip(REASONS, counts, strict=True)}
