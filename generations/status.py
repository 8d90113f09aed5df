"""Where a prompt stands: its jobs and generations, its place in the queue, and whether any
server could serve it.

A status poll is the most frequent request of all, so a prompt, its jobs and (for the AI
Horde's status) its queue prefix are read in one statement: one consistent snapshot, in which
a job that fails between two reads can never make an unfinished prompt look done. Which
active servers could serve it comes from `active_servers`, a per-process snapshot of the
servers' profiles that is refreshed every few seconds and whenever this process changed one.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from generations import events
from generations.matching import PromptFacts, ServerProfile, could_serve
from generations.models import Job, Prompt, PromptWorker, prompt_lifetime
from generations.sql import as_json, as_uuid, dt_param, execute, fetch, uuid_param
from koboldcluster.errors import NotFound
from koboldcluster.rows import aware, instance
from servers.models import Server
from servers.services import servers_epoch

logger = logging.getLogger(__name__)

# How far down the queue the status counts (see Outlook.queue_position).
QUEUE_SCAN = 1000


@dataclass(frozen=True)
class Outlook:
    """Where a prompt stands (the AI Horde's status extras)."""

    # 1-based place among queued prompts; 0 when nothing of it waits. A place deeper than
    # QUEUE_SCAN is reported as QUEUE_SCAN + 1: counting further would cost as much as the
    # queue is long, on every poll.
    queue_position: int
    wait_time: int  # seconds, estimated
    is_possible: bool  # some active server could serve it (or one is already at work)


@dataclass
class PromptStatus:
    prompt: Prompt
    jobs: list[Job]
    outlook: Outlook | None = None
    # The queue ahead of the prompt, read with it: (prompts, tokens, slots).
    ahead: tuple[int, int, int] = (0, 0, 0)
    server_names: dict[uuid.UUID, str] = field(default_factory=dict)
    server_speeds: dict[uuid.UUID, float] = field(default_factory=dict)

    def _count(self, *states: str) -> int:
        return sum(1 for job in self.jobs if job.state in states)

    @property
    def finished(self) -> int:
        return self._count(Job.State.DONE)

    @property
    def processing(self) -> int:
        return self._count(Job.State.PROCESSING)

    @property
    def restarted(self) -> int:
        return self._count(Job.State.FAULTED, Job.State.ABANDONED)

    @property
    def waiting(self) -> int:
        return self.prompt.waiting  # cancelling and faulting set it to 0

    @property
    def faulted(self) -> bool:
        return self.prompt.state == Prompt.State.FAULTED

    @property
    def done(self) -> bool:
        """Nothing waiting and nothing in flight: all n delivered, or cancelled, or faulted."""
        return self.faulted or (self.waiting == 0 and self.processing == 0)

    @property
    def generations(self) -> list[Job]:
        return [job for job in self.jobs if job.state == Job.State.DONE]

    @property
    def tokens(self) -> int:
        """Tokens charged so far: those of the delivered generations, and of the text kept
        from servers that dropped out (a continuation's carried text, generations/handover.py).
        A job that ended without text is worth 0."""
        return sum(job.tokens for job in self.jobs if job.state != Job.State.PROCESSING)

    def server_name(self, job: Job) -> str:
        return self.server_names.get(job.server_id, "") if job.server_id else ""

    def producers(self, job: Job) -> list[Job]:
        """The jobs whose text `job`'s text is made of, first to last: those that dropped out
        after producing text it continues (generations/handover.py), then `job` itself."""
        if not job.carried_tokens:
            return [job]
        kept = [
            other
            for other in self.jobs
            if other.state in (Job.State.FAULTED, Job.State.ABANDONED)
            and other.tokens
            and other.started <= job.started
        ]
        return [*kept, job]

    def serving(self) -> list[dict[str, str]]:
        """The servers at work on the prompt now: {"id", "name"} each."""
        return [
            {"id": str(job.server_id) if job.server_id else "", "name": self.server_name(job)}
            for job in self.jobs
            if job.state == Job.State.PROCESSING
        ]

    def servers_of(self, job: Job) -> list[dict[str, str]]:
        """The servers that produced `job`'s text, first to last: {"id", "name"} each."""
        return [
            {"id": str(part.server_id) if part.server_id else "", "name": self.server_name(part)}
            for part in self.producers(job)
        ]


_PROMPT_COLUMNS = (
    "p.id, p.user_id, p.waiting, p.state, p.expires_at, p.max_length, p.max_context_length, "
    "p.any_model, p.models, p.workers, p.softprompt, p.trusted_workers, p.slow_workers, p.n"
)
_JOB_COLUMNS = (
    "j.id, j.state, j.text, j.tokens, j.model, j.seed, j.censored, j.gen_metadata, "
    "j.server_id, j.started, j.deadline, s.name, s.speed, j.prompt_tokens, j.prompt_trimmed, "
    "j.carried_tokens"
)
# The queue up to and including the prompt (when it still waits), as one bounded read. The
# prompt's key is a scalar subquery, so that both databases bound the walk of the queue index
# by it (a join with the prompt's row let PostgreSQL walk the whole queue).
_AHEAD = f"""
WITH t AS (
    SELECT sort_key, created FROM generations_prompt
    WHERE id = %s AND waiting > 0 AND state = 'live'
),
ahead AS (
    SELECT q.max_length * q.waiting AS tokens, q.waiting AS slots
    FROM generations_prompt q
    WHERE q.state = 'live' AND q.waiting > 0 AND q.expires_at > %s
      AND q.sort_key >= (SELECT sort_key FROM t)
      AND (q.sort_key > (SELECT sort_key FROM t) OR q.created <= (SELECT created FROM t))
    ORDER BY q.sort_key DESC, q.created LIMIT {QUEUE_SCAN + 1}
)"""


def _read(prompt_id: uuid.UUID, now: datetime, *, outlook: bool) -> PromptStatus:
    """The prompt and its jobs (and with `outlook` the queue ahead of it): one statement."""
    joins = (
        "FROM generations_prompt p LEFT JOIN generations_job j ON j.prompt_id = p.id "
        "LEFT JOIN servers_server s ON s.id = j.server_id"
    )
    where = "WHERE p.id = %s AND p.expires_at > %s ORDER BY j.started, j.id"
    params: list[object] = [uuid_param(prompt_id), dt_param(now)]
    if outlook:
        ahead = "SELECT COUNT(*) AS n, SUM(tokens) AS tokens, SUM(slots) AS slots FROM ahead"
        sql = (
            f"{_AHEAD} SELECT {_PROMPT_COLUMNS}, {_JOB_COLUMNS}, a.n, a.tokens, a.slots "
            f"{joins} LEFT JOIN ({ahead}) a ON 1 = 1 {where}"
        )
        params = [uuid_param(prompt_id), dt_param(now), *params]
    else:
        sql = f"SELECT {_PROMPT_COLUMNS}, {_JOB_COLUMNS} {joins} {where}"
    rows = fetch(sql, params)
    if not rows:
        raise NotFound(f"Request {prompt_id} is unknown or has expired.", rc="RequestNotFound")
    return _status_from_rows(rows, outlook=outlook)


def _status_from_rows(rows: list[tuple], *, outlook: bool) -> PromptStatus:
    first = rows[0]
    prompt = instance(
        Prompt,
        id=as_uuid(first[0]),
        user_id=first[1],
        waiting=first[2],
        state=first[3],
        expires_at=aware(first[4]),
        max_length=first[5],
        max_context_length=first[6],
        any_model=bool(first[7]),
        models=as_json(first[8]),
        workers=first[9],
        softprompt=first[10],
        trusted_workers=bool(first[11]),
        slow_workers=bool(first[12]),
        n=first[13],
    )
    status = PromptStatus(prompt=prompt, jobs=[])
    for row in rows:
        if row[14] is None:
            continue  # a prompt without jobs
        job = instance(
            Job,
            id=as_uuid(row[14]),
            prompt_id=prompt.id,
            state=row[15],
            text=row[16],
            tokens=row[17],
            model=row[18],
            seed=row[19],
            censored=bool(row[20]),
            gen_metadata=as_json(row[21]),
            server_id=as_uuid(row[22]),
            started=aware(row[23]),
            deadline=aware(row[24]),
            prompt_tokens=row[27],
            prompt_trimmed=row[28],
            carried_tokens=row[29],
        )
        status.jobs.append(job)
        if job.server_id is not None:
            status.server_names[job.server_id] = row[25]
            status.server_speeds[job.server_id] = row[26]
    if outlook:
        status.ahead = (first[30] or 0, int(first[31] or 0), int(first[32] or 0))
    return status


def prompt_status(
    *, prompt_id: object, outlook: bool = False, now: datetime | None = None
) -> PromptStatus:
    """The prompt's progress (with `outlook`, also its place, wait and possibility).

    A poll is activity: it keeps the prompt alive.
    """
    now = now or timezone.now()
    status = _read(prompt_id, now, outlook=outlook)
    expiry = prompt_lifetime()
    # Write the new expiry only when it moves noticeably: a client polling every second
    # should not turn every poll into a write.
    if status.prompt.expires_at < now + expiry - expiry / 20:
        status.prompt.expires_at = now + expiry
        execute(
            "UPDATE generations_prompt SET last_activity = %s, expires_at = %s WHERE id = %s",
            [dt_param(now), dt_param(now + expiry), uuid_param(status.prompt.id)],
        )
    if outlook:
        status.outlook = prompt_outlook(status=status, now=now)
    return status


def prompt_cancel(
    *, prompt_id: object, outlook: bool = False, now: datetime | None = None
) -> PromptStatus:
    """Stop handing out slots; jobs in flight may still finish and are paid."""
    now = now or timezone.now()
    _read(prompt_id, now, outlook=False)  # 404 for an unknown or expired prompt
    Prompt.objects.filter(pk=prompt_id, state=Prompt.State.LIVE).update(
        state=Prompt.State.CANCELLED,
        waiting=0,
        last_activity=now,
        expires_at=now + prompt_lifetime(),
    )
    logger.info("prompt %s cancelled", prompt_id)
    events.prompt_changed(prompt_id)
    status = _read(prompt_id, now, outlook=outlook)
    if outlook:
        status.outlook = prompt_outlook(status=status, now=now)
    return status


def prompt_outlook(*, status: PromptStatus, now: datetime | None = None) -> Outlook:
    """The prompt's queue position, estimated wait and whether any server could serve it.

    The queue ahead was read with the status; the servers come from `active_servers`.
    """
    now = now or timezone.now()
    prompt = status.prompt
    servers = able_servers(prompt=prompt, now=now)
    in_flight = [job for job in status.jobs if job.state == Job.State.PROCESSING]
    position, tokens_ahead, slots_ahead = 0, 0, 0
    if prompt.waiting > 0 and prompt.state == Prompt.State.LIVE:
        count, tokens_ahead, slots_ahead = status.ahead
        # The prefix ends with this prompt: its length is the position, unless it was cut.
        position = min(count or 1, QUEUE_SCAN + 1)
    threads = sum(server.threads for server in servers)
    speeds = [server.speed for server in servers if server.speed > 0]
    speed = sum(speeds) / len(speeds) if speeds else 0.0
    capacity = speed * min(threads, slots_ahead) or 1.0
    queue_wait = tokens_ahead / capacity
    flight_wait = max(
        (_remaining(job, status, prompt.max_length, now) for job in in_flight), default=0.0
    )
    return Outlook(
        queue_position=position,
        wait_time=round(queue_wait + flight_wait),
        is_possible=bool(in_flight) or bool(servers) or prompt.waiting == 0,
    )


def _remaining(job: Job, status: PromptStatus, max_length: int, now: datetime) -> float:
    """Seconds a job in flight should still need: by its server's speed, else its deadline."""
    elapsed = (now - job.started).total_seconds()
    speed = status.server_speeds.get(job.server_id, 0.0) if job.server_id else 0.0
    if speed > 0:  # a continuation has only what the servers before it left to generate
        return max(0.0, max(max_length - job.carried_tokens, 1) / speed - elapsed)
    return max(0.0, (job.deadline - now).total_seconds())


@dataclass(frozen=True)
class ActiveServer:
    profile: ServerProfile
    owner_only: bool  # in maintenance or paused: it takes only its owner's prompts
    threads: int
    speed: float


@dataclass(frozen=True)
class _Snapshot:
    epoch: int
    until: float
    servers: list[ActiveServer]


_snapshot: _Snapshot | None = None
SNAPSHOT_SECONDS = 2.0


def active_servers(now: datetime | None = None, *, fresh: bool = False) -> list[ActiveServer]:
    """The active servers' profiles: read again every SNAPSHOT_SECONDS, or at once after this
    process checked in or changed a server, or when asked `fresh`. Estimates only
    (is_possible, wait_time, fitting front-end requests)."""
    global _snapshot
    if (
        not fresh
        and _snapshot is not None
        and _snapshot.epoch == servers_epoch()
        and _snapshot.until > time.monotonic()
    ):
        return _snapshot.servers
    epoch = servers_epoch()
    servers = server_profiles(Server.objects.active(now).select_related("owner"))
    _snapshot = _Snapshot(epoch, time.monotonic() + SNAPSHOT_SECONDS, servers)
    return servers


def server_profiles(servers: Iterable[Server]) -> list[ActiveServer]:
    """`servers` (with their owners loaded) as the matching rules see them."""
    return [
        ActiveServer(
            profile=ServerProfile.of(server),
            owner_only=server.maintenance or server.paused,
            threads=server.threads,
            speed=server.speed,
        )
        for server in servers
    ]


def able_servers(*, prompt: Prompt, now: datetime | None = None) -> list[ActiveServer]:
    """The active servers that could serve `prompt` now (its models, limits and options)."""
    listed: frozenset[uuid.UUID] = frozenset()
    if prompt.workers != Prompt.Workers.ANY:
        listed = frozenset(
            PromptWorker.objects.filter(prompt_id=prompt.pk).values_list("server_id", flat=True)
        )
    facts = PromptFacts.of(prompt, listed)
    return [
        server
        for server in active_servers(now)
        if could_serve(facts, server.profile, maintenance=server.owner_only)
    ]
