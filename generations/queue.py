"""The queue: a prompt's `n` slots go in, and each goes to exactly one server.

`prompt_create` stores a prompt with its waiting slots in one statement that also checks the
user's concurrency and computes the priority from the exact ledger balance. `job_pop` is a
server's whole pop: who it is, its check-in, its priority users and the claim of the best
prompt it may serve (`generations.matching`). A claim is one conditional UPDATE
(`waiting = waiting - 1 … AND waiting > 0`) and the job's INSERT in the same transaction, so
under any interleaving a slot goes to exactly one server, on SQLite (writers serialised by
BEGIN IMMEDIATE) and PostgreSQL (row locks; READ COMMITTED re-checks the WHERE clause).
An idle pop's answer is remembered briefly per server profile until the queue changes.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.identity import lock_account, priority_user_ids
from accounts.models import User
from accounts.selectors import balance_sql
from generations import events
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
from generations.models import Job, Prompt, PromptWorker
from generations.sql import (
    as_json,
    as_uuid,
    dt_param,
    execute,
    fetch,
    greatest,
    is_postgres,
    json_cast,
    json_param,
    least,
    placeholders,
    uuid_param,
)
from koboldcluster.errors import BadRequest, Forbidden, NotFound, TooManyRequests
from koboldcluster.rows import instance
from servers.models import Server
from servers.services import CheckIn, Credentials, server_for_pop

logger = logging.getLogger(__name__)

# Claims retried when racing pops took every candidate first (PostgreSQL only: on SQLite a
# claim runs under the database's write lock and cannot lose a race).
POP_ROUNDS = 16
# A slot frees when a server takes one, which we cannot foresee: ask for a short pause.
TOO_MANY_PROMPTS_RETRY_AFTER = 10


def _expiry() -> timedelta:
    return timedelta(seconds=settings.KOBOLDCLUSTER["PROMPT_EXPIRY_SECONDS"])


@dataclass(frozen=True)
class GenerationRequest:
    """A validated request for `n` generations of one prompt."""

    text: str
    n: int
    max_length: int
    max_context_length: int
    params: dict = field(default_factory=dict)
    models: list[str] = field(default_factory=list)
    client_agent: str = ""
    # Which servers may serve it (the AI Horde's request options); the defaults allow any.
    softprompt: str = ""
    trusted_workers: bool = False
    slow_workers: bool = True
    server_ids: list[object] = field(default_factory=list)
    servers_excluded: bool = False  # server_ids is a deny list rather than an allow list
    nsfw: bool = True
    batching: bool = True  # a server asking for several jobs at once may get several of these

    def tokens_at_most(self) -> int:
        """The most tokens the request can cost: every generation at its full max_length."""
        return self.n * self.max_length


def sort_key(balance: float, created: datetime) -> float:
    """Order by balance + rate × waiting time; equal to this key, which never changes."""
    return balance - settings.KOBOLDCLUSTER["AGEING_TOKENS_PER_SECOND"] * created.timestamp()


def _sort_key_sql(user: User, created: datetime) -> tuple[str, list[object]]:
    """The prompt's sort key as SQL: the requester's exact balance within the bounds (DESIGN
    §4.3), read in the statement that inserts the prompt. Names without credentials sit at
    the floor."""
    limits = settings.KOBOLDCLUSTER
    floor, cap = limits["PRIORITY_FLOOR_TOKENS"], limits["PRIORITY_CAP_TOKENS"]
    if not user.has_credentials:
        return "%s", [sort_key(floor, created)]
    balance, params = balance_sql(user.pk)
    ageing = limits["AGEING_TOKENS_PER_SECOND"] * created.timestamp()
    return f"({least(greatest(balance, '%s'), '%s')} - %s)", [*params, floor, cap, ageing]


def prompt_create(*, user: User, request: GenerationRequest, now: datetime | None = None) -> Prompt:
    """Queue a prompt with `n` waiting slots; it lives PROMPT_EXPIRY_SECONDS past its last use.

    429 `TooManyPrompts` when it would take the user over their waiting slots limit.
    """
    now = now or timezone.now()
    if not request.batching and request.n > 1 and not user.trusted:
        raise BadRequest(
            "Only trusted accounts may disable batching for n > 1.", rc="RequiresTrust"
        )
    server_ids = _known_servers(request.server_ids)
    listed = Prompt.Workers.EXCEPT if request.servers_excluded else Prompt.Workers.ONLY
    prompt = instance(
        Prompt,
        id=uuid.uuid4(),
        user=user,
        text=request.text,
        params=request.params,
        models=list(dict.fromkeys(request.models)),
        any_model=not request.models,
        n=request.n,
        waiting=request.n,
        max_length=request.max_length,
        max_context_length=request.max_context_length,
        client_agent=request.client_agent[:255],
        softprompt=request.softprompt,
        trusted_workers=request.trusted_workers,
        slow_workers=request.slow_workers,
        workers=listed if server_ids else Prompt.Workers.ANY,
        nsfw=request.nsfw,
        batching=request.batching,
        created=now,
        last_activity=now,
        expires_at=now + _expiry(),
    )
    with transaction.atomic():
        if not user.is_anonymous_user:
            # Two submits of one user at once must not both see room for one more. Not the
            # anonymous user's: every caller without a key shares it, and making all of them
            # wait for each other is the lock convoy the AI Horde suffered. (SQLite's
            # transaction already holds its only write lock.)
            lock_account(user)
        if not _insert_within_limit(prompt, user, now):
            _refuse_over_limit(user, request.n, now)
        if server_ids:
            PromptWorker.objects.bulk_create(
                PromptWorker(prompt=prompt, server_id=i) for i in server_ids
            )
        events.queue_changed(PromptFacts.of(prompt, frozenset(server_ids)))
    logger.info(
        "prompt %s queued: user=%s n=%s max_length=%s max_context_length=%s models=%s",
        prompt.id,
        user.pk,
        prompt.n,
        prompt.max_length,
        prompt.max_context_length,
        len(prompt.models),
    )
    return prompt


def _known_servers(server_ids: list[object]) -> list[object]:
    server_ids = list(dict.fromkeys(server_ids))
    if server_ids:
        known = set(Server.objects.filter(id__in=server_ids).values_list("id", flat=True))
        unknown = [str(i) for i in server_ids if i not in known]
        if unknown:
            raise NotFound(f"Server {unknown[0]} is unknown.", rc="WorkerNotFound")
    return server_ids


_PROMPT_COLUMNS = (
    "id, user_id, text, params, any_model, n, waiting, max_length, max_context_length, state, "
    "faulted_jobs, client_agent, softprompt, trusted_workers, slow_workers, workers, nsfw, "
    "batching, created, last_activity, expires_at, models, sort_key"
)
_WAITING_OF_USER = (
    "SELECT COALESCE(SUM(q.waiting), 0) FROM generations_prompt q WHERE q.user_id = %s "
    "AND q.state = 'live' AND q.waiting > 0 AND q.expires_at > %s"
)


def _insert_within_limit(prompt: Prompt, user: User, now: datetime) -> bool:
    """INSERT the prompt (and its model names) if the user's waiting slots leave room.

    One statement reads the user's waiting slots and balance and writes the row; on
    PostgreSQL the model names go in the same statement. False when over the limit.
    """
    key_sql, key_params = _sort_key_sql(user, now)
    values = [
        uuid_param(prompt.id), user.pk, prompt.text, json_param(prompt.params),
        prompt.any_model, prompt.n, prompt.waiting, prompt.max_length,
        prompt.max_context_length, Prompt.State.LIVE, 0, prompt.client_agent,
        prompt.softprompt, prompt.trusted_workers, prompt.slow_workers, prompt.workers,
        prompt.nsfw, prompt.batching, dt_param(now), dt_param(now),
        dt_param(prompt.expires_at), json_param(prompt.models),
    ]  # fmt: skip
    json = json_cast()
    row = ", ".join(["%s"] * 3 + [json] + ["%s"] * 17 + [json])
    insert = (
        f"INSERT INTO generations_prompt ({_PROMPT_COLUMNS}) SELECT {row}, {key_sql} "
        f"WHERE ({_WAITING_OF_USER}) + %s <= %s"
    )
    params = [*values, *key_params, user.pk, dt_param(now), prompt.n, user.concurrency_limit()]
    if not prompt.models:
        return execute(insert, params) == 1
    if is_postgres():
        with_models = (
            f"WITH p AS ({insert} RETURNING id) INSERT INTO generations_promptmodel "
            "(prompt_id, name) SELECT p.id, m.name FROM p, unnest(%s::text[]) AS m(name)"
        )
        return execute(with_models, [*params, prompt.models]) > 0
    if execute(insert, params) != 1:
        return False
    rows = ", ".join(["(%s, %s)"] * len(prompt.models))
    names = [value for name in prompt.models for value in (uuid_param(prompt.id), name)]
    execute(f"INSERT INTO generations_promptmodel (prompt_id, name) VALUES {rows}", names)
    return True


def _refuse_over_limit(user: User, n: int, now: datetime) -> None:
    waiting = fetch(_WAITING_OF_USER, [user.pk, dt_param(now)])[0][0]
    limit = user.concurrency_limit()
    message = (
        f"Too many generations waiting: {waiting} queued, {n} more asked for, and the limit is "
        f"{limit}. Wait until servers have taken some."
    )
    if user.is_anonymous_user:
        message += " The anonymous limit is shared by everyone without an account: register."
    raise TooManyRequests(message, rc="TooManyPrompts", retry_after=TOO_MANY_PROMPTS_RETRY_AFTER)


@dataclass
class PopResult:
    jobs: list[Job] = field(default_factory=list)
    ttl: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    server: Server | None = None

    @property
    def job(self) -> Job | None:
        return self.jobs[0] if self.jobs else None


def job_pop(
    *,
    credentials: Credentials,
    check_in: CheckIn,
    priority_usernames: Iterable[str] = (),
    amount: int = 1,
    now: datetime | None = None,
) -> PopResult:
    """A server's pop: identify it, check it in, and claim work for it (`jobs_claim`)."""
    now = now or timezone.now()
    server = server_for_pop(credentials=credentials, check_in=check_in, now=now)
    first = priority_user_ids(priority_usernames)
    result = jobs_claim(server=server, priority_user_ids=first, amount=amount, now=now)
    result.server = server
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
    return PopResult(skipped=dict(idle.skipped))


def _forget_idle_answers(prompt: PromptFacts) -> None:
    """Forget the idle answers of the server profiles that could serve a new prompt."""
    for key in list(_idle):
        profile, _, owner_only = key
        if owner_only and prompt.user_id != profile.owner_id:
            continue
        if barring_reason(prompt, profile) is None:
            _idle.pop(key, None)


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


_CLAIM_RETURNS = (
    "id, user_id, text, params, max_length, max_context_length, any_model, models, "
    "softprompt, batching, waiting"
)


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
        f"AND expires_at > %s RETURNING {_CLAIM_RETURNS}"
    )
    params = [now_p, dt_param(now + _expiry()), *pick_params, now_p]
    for _ in range(POP_ROUNDS):
        with transaction.atomic():
            rows = fetch(claim, params)
            if rows:
                jobs = _create_jobs(rows[0], server, amount, now)
                break
        # Nothing claimed: nothing to serve, or (PostgreSQL) a racing pop took the slot of
        # the prompt we picked between our pick and our update. Only the latter tries again.
        if not is_postgres() or not fetch(f"SELECT {picks}", pick_params)[0][0]:
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


def _create_jobs(row: tuple, server: Server, amount: int, now: datetime) -> list[Job]:
    """The claimed prompt's job(s), inserted in the claim's transaction."""
    prompt = instance(
        Prompt,
        id=as_uuid(row[0]),
        user_id=row[1],
        text=row[2],
        params=as_json(row[3]),
        max_length=row[4],
        max_context_length=row[5],
        any_model=bool(row[6]),
        models=as_json(row[7]),
        softprompt=row[8],
        batching=bool(row[9]),
        waiting=row[10],
    )
    # The UPDATE holds the row (PostgreSQL) or the database (SQLite) until commit, so the
    # slots read here are still there to take.
    more = min(amount - 1, prompt.waiting) if prompt.batching else 0
    if more > 0 and execute(
        "UPDATE generations_prompt SET waiting = waiting - %s WHERE id = %s AND waiting >= %s",
        [more, uuid_param(prompt.id), more],
    ):
        prompt.waiting -= more
    else:
        more = 0
    deadline = now + timedelta(seconds=server.job_ttl(prompt.max_length))
    model = prompt.model_for(server.models)
    jobs = [
        instance(
            Job,
            id=uuid.uuid4(),
            prompt=prompt,
            server=server,
            model=model,
            started=now,
            deadline=deadline,
        )
        for _ in range(1 + more)
    ]
    rows = ", ".join(["(%s, %s, %s, %s, 'processing', %s, %s, '', 0, %s, %s)"] * len(jobs))
    values: list[object] = []
    for job in jobs:
        values += [
            uuid_param(job.id), uuid_param(prompt.id), uuid_param(server.id), model,
            dt_param(now), dt_param(deadline), False, json_param([]),
        ]  # fmt: skip
    execute(
        "INSERT INTO generations_job (id, prompt_id, server_id, model, state, started, "
        f"deadline, text, tokens, censored, gen_metadata) VALUES {rows}",
        values,
    )
    return jobs


def _skipped(profile: ServerProfile, now: datetime) -> dict[str, int]:
    """Counts of waiting prompts this server cannot serve, by the first reason that bars it."""
    sql, params = skipped_sql(profile)
    counts = fetch(sql, [*params, dt_param(now)])[0]
    return {reason: int(count) for reason, count in zip(REASONS, counts, strict=True)}
