"""The queue: create a prompt, hand its slots to servers, take their generations back.

Every state change is a conditional UPDATE on the state it changes from, so that under any
interleaving a slot goes to exactly one server and a generation is paid exactly once, on
SQLite (writers serialised by BEGIN IMMEDIATE) and PostgreSQL (row locks; READ COMMITTED
re-checks the WHERE clause after waiting) alike.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, Count, F, Q, Sum, Value, When
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.models import User
from accounts.selectors import totals_for
from accounts.services import ledger_record_generation, lock_account
from generations.models import (
    Job,
    Prompt,
    PromptModel,
    PromptQuerySet,
    PromptWorker,
    count_tokens,
)
from koboldcluster import wakeups
from koboldcluster.errors import BadRequest, Forbidden, NotFound, TooManyRequests
from servers.models import Server

logger = logging.getLogger(__name__)

# How many queue candidates a pop reads at once; more rounds follow only under contention.
POP_CANDIDATES = 8
POP_ROUNDS = 16
SKIPPED_SCAN = 1000
# Expired prompts deleted per transaction: a backlog is purged in many short transactions,
# so that it never holds the write lock (SQLite) for long.
PURGE_BATCH = 100


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


def priority_of(user: User) -> int:
    """The balance a prompt is queued with (DESIGN §4.3), within the configured bounds.

    Anonymous and unclaimed names sit at the floor; the cap keeps a huge balance from
    pushing everyone else back by more than the ageing makes up in a few minutes.
    """
    limits = settings.KOBOLDCLUSTER
    floor, cap = limits["PRIORITY_FLOOR_TOKENS"], limits["PRIORITY_CAP_TOKENS"]
    if not user.has_credentials:
        return floor
    return min(max(totals_for(user).kudos, floor), cap)


def sort_key(balance: float, created: datetime) -> float:
    """Order by balance + rate × waiting time; equal to this key, which never changes."""
    return balance - settings.KOBOLDCLUSTER["AGEING_TOKENS_PER_SECOND"] * created.timestamp()


def prompt_create(*, user: User, request: GenerationRequest, now: datetime | None = None) -> Prompt:
    """Queue a prompt with `n` waiting slots; it lives PROMPT_EXPIRY_SECONDS past its last use."""
    now = now or timezone.now()
    if not request.batching and request.n > 1 and not user.trusted:
        raise BadRequest(
            "Only trusted accounts may disable batching for n > 1.", rc="RequiresTrust"
        )
    server_ids = list(dict.fromkeys(request.server_ids))
    if server_ids:
        known = set(Server.objects.filter(id__in=server_ids).values_list("id", flat=True))
        unknown = [str(i) for i in server_ids if i not in known]
        if unknown:
            raise NotFound(f"Server {unknown[0]} is unknown.", rc="WorkerNotFound")
    listed = Prompt.Workers.EXCEPT if request.servers_excluded else Prompt.Workers.ONLY
    prompt = Prompt(
        user=user,
        text=request.text,
        params=request.params,
        models=list(dict.fromkeys(request.models)),
        any_model=not request.models,
        n=request.n,
        waiting=request.n,
        max_length=request.max_length,
        max_context_length=request.max_context_length,
        sort_key=sort_key(priority_of(user), now),
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
        _check_concurrency(user, request.n, now)
        prompt.save(force_insert=True)
        PromptModel.objects.bulk_create(PromptModel(prompt=prompt, name=m) for m in prompt.models)
        PromptWorker.objects.bulk_create(
            PromptWorker(prompt=prompt, server_id=i) for i in server_ids
        )
        wakeups.notify_on_commit(wakeups.QUEUE)
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


# A slot frees when a server takes one, which we cannot foresee: ask for a short pause.
TOO_MANY_PROMPTS_RETRY_AFTER = 10


def _check_concurrency(user: User, n: int, now: datetime) -> None:
    """Refuse (429) a prompt that would take `user` over their waiting slots limit.

    Call in the transaction that inserts the prompt. Two submits of one user at once must not
    both see room for one more, so they queue on the user's row. Not the anonymous user's:
    that one account is shared by every caller without a key, and making all of them wait
    for each other is the lock convoy the AI Horde suffered. Its generous pooled limit may be
    overshot by the anonymous submits in flight at that instant, which the per-address rate
    limit bounds.
    """
    limit = user.concurrency_limit()
    if not user.is_anonymous_user:
        lock_account(user)
    waiting = Prompt.objects.queued(now).filter(user=user).aggregate(total=Sum("waiting"))["total"]
    waiting = waiting or 0
    if waiting + n <= limit:
        return
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

    @property
    def job(self) -> Job | None:
        return self.jobs[0] if self.jobs else None


def _is_slow(server: Server) -> bool:
    return server.speed < settings.KOBOLDCLUSTER["SLOW_SERVER_TOKENS_PER_SECOND"]


def _servable(server: Server, now: datetime) -> PromptQuerySet:
    """The queue as `server` may serve it: its limits, models, standing and soft prompts.

    `server.owner` must be loaded (server_check_in sets it). Every condition is a predicate on
    the queue row (or an EXISTS probe by primary key), so the queue index still delivers
    candidates in order and pop reads only the first few.
    """
    conditions = (
        Q(max_length__lte=server.max_length, max_context_length__lte=server.max_context_length)
        & Prompt.model_match(server.models)
        & Prompt.server_match(server.id)
    )
    if server.softprompts:
        conditions &= Q(softprompt="") | Q(softprompt__in=server.softprompts)
    else:
        conditions &= Q(softprompt="")
    if not server.owner.trusted:
        conditions &= Q(trusted_workers=False)
    if _is_slow(server):
        conditions &= Q(slow_workers=True)
    # One filter(): each further call would copy the whole query again (pop's CPU time).
    return Prompt.objects.queued(now).filter(conditions)


def job_pop(
    *,
    server: Server,
    priority_user_ids: Iterable[int] = (),
    amount: int = 1,
    now: datetime | None = None,
) -> PopResult:
    """Claim slots of the best prompt `server` can serve, or say why there is none.

    The server's owner and its priority users come first, then everyone by sort_key. Up to
    `amount` slots are taken, all of one prompt (the AI Horde's batching). A server in
    maintenance or paused gets only its owner's prompts; with none, maintenance answers 403
    `WorkerMaintenance` with its message, and a paused server quietly gets nothing.
    """
    now = now or timezone.now()
    servable = _servable(server, now)
    if server.maintenance or server.paused:
        jobs = _claim_best(servable.filter(user_id=server.owner_id), server, amount, now)
        if jobs:
            return PopResult(jobs=jobs, ttl=jobs[0].ttl)
        if server.maintenance:
            raise Forbidden(
                server.maintenance_msg
                or f"The server '{server.name}' is in maintenance: it only gets its owner's "
                "requests. Its owner or an administrator can end the maintenance.",
                rc="WorkerMaintenance",
            )
        return PopResult()
    first_users = {server.owner_id, *priority_user_ids}
    passes = [servable]
    # Most owners queue nothing themselves: a cheap look at their own queue (its index) spares
    # building and running the whole matching query twice.
    if Prompt.objects.queued(now).filter(user_id__in=first_users).exists():
        passes.insert(0, servable.filter(user_id__in=first_users))
    for queryset in passes:
        jobs = _claim_best(queryset, server, amount, now)
        if jobs:
            return PopResult(jobs=jobs, ttl=jobs[0].ttl)
    return PopResult(skipped=_skipped(server, now))


def _claim_best(queryset: PromptQuerySet, server: Server, amount: int, now: datetime) -> list[Job]:
    ordered = queryset.order_by("-sort_key", "created").values_list("id", flat=True)
    for _ in range(POP_ROUNDS):
        candidates = list(ordered[:POP_CANDIDATES])
        if not candidates:
            return []
        for prompt_id in candidates:
            jobs = _claim(prompt_id, server, amount, now)
            if jobs:
                return jobs
        # Every candidate was taken by racing pops; they have left the queue, read it again.
    return []


def _claim(prompt_id: object, server: Server, amount: int, now: datetime) -> list[Job]:
    with transaction.atomic():
        claimed = (
            Prompt.objects.queued(now)
            .filter(id=prompt_id)
            .update(waiting=F("waiting") - 1, last_activity=now, expires_at=now + _expiry())
        )
        if not claimed:
            return []
        prompt = Prompt.objects.get(id=prompt_id)
        # The UPDATE above holds the row (PostgreSQL) or the database (SQLite) until commit,
        # so the slots read here are still there to take.
        more = min(amount - 1, prompt.waiting) if prompt.batching else 0
        if more > 0 and Prompt.objects.filter(id=prompt_id, waiting__gte=more).update(
            waiting=F("waiting") - more
        ):
            prompt.waiting -= more
        else:
            more = 0
        ttl = server.job_ttl(prompt.max_length)
        model = prompt.model_for(server.models)
        jobs = [
            Job(
                prompt=prompt,
                server=server,
                model=model,
                started=now,
                deadline=now + timedelta(seconds=ttl),
            )
            for _ in range(1 + more)
        ]
        Job.objects.bulk_create(jobs)
    logger.info(
        "%s jobs of prompt %s popped by server %s: %s",
        len(jobs),
        prompt_id,
        server.id,
        " ".join(str(job.id) for job in jobs),
    )
    return jobs


def _skipped(server: Server, now: datetime) -> dict[str, int]:
    """Counts of waiting prompts this server cannot serve, by the first reason that bars it.

    The reasons are the AI Horde's names, in the order checked: `models`,
    `max_context_length`, `max_length`, `worker_id` (the prompt's server list),
    `untrusted`, `performance` (too slow) and `matching_softprompt`. Only the first
    SKIPPED_SCAN prompts of the queue are looked at: an idle server asks every second, and
    its answer must not cost as much as the queue is long.
    """
    # A reason that cannot apply to this server (None) is reported as 0 without a query term.
    bars: dict[str, Q | None] = {
        "models": ~Prompt.model_match(server.models),
        "max_context_length": Q(max_context_length__gt=server.max_context_length),
        "max_length": Q(max_length__gt=server.max_length),
        "worker_id": ~Prompt.server_match(server.id),
        "untrusted": None if server.owner.trusted else Q(trusted_workers=True),
        "performance": Q(slow_workers=False) if _is_slow(server) else None,
        "matching_softprompt": (
            ~Q(softprompt="") & ~Q(softprompt__in=server.softprompts)
            if server.softprompts
            else ~Q(softprompt="")
        ),
    }
    counts, passed = {}, Q()
    for reason, bar in bars.items():
        if bar is not None:
            # Aliased: an aggregate named like a field would shadow it in the filters.
            counts[f"skip_{reason}"] = Count("id", filter=passed & bar)
            passed &= ~bar
    head = Prompt.objects.queued(now).order_by("-sort_key", "created").values("id")
    found = Prompt.objects.filter(id__in=head[:SKIPPED_SCAN]).aggregate(**counts)
    return {reason: found.get(f"skip_{reason}", 0) for reason in bars}


def job_for_submit(*, job_id: object, now: datetime | None = None) -> Job:
    """The job a server wants to submit, with its server and owner; 404 when unknown or gone."""
    job = (
        Job.objects.select_related("server__owner", "prompt")
        .defer("text", "prompt__text", "prompt__params")
        .filter(id=job_id, prompt__expires_at__gt=now or timezone.now(), server__isnull=False)
        .first()
    )
    if job is None:
        raise NotFound(f"Job {job_id} is unknown or has expired.", rc="InvalidJobID")
    return job


# What a server may report about a generation (the AI Horde's text metadata: only this).
CSAM_METADATA = {"type": "censorship", "value": "csam"}


def job_submit(
    *,
    job: Job,
    text: str,
    state: str = "ok",
    seed: int | None = None,
    gen_metadata: list[dict] | None = None,
    now: datetime | None = None,
) -> int:
    """Accept a generation exactly once and pay for it; return the reward in tokens.

    `state="faulted"` gives the slot back to the queue and pays nothing. `censored` and
    `csam` are accepted and paid like `ok` (the server did the work, and used tokens always
    equal contributed tokens); the status shows them as such.
    """
    now = now or timezone.now()
    if state == Job.State.FAULTED:
        job_fault(job=job, now=now)
        return 0
    metadata = list(gen_metadata or [])
    if state == "csam" and CSAM_METADATA not in [_bare(m) for m in metadata]:
        metadata.append(dict(CSAM_METADATA))
    tokens = count_tokens(text, job.prompt.max_length)
    done = {
        "state": Job.State.DONE,
        "text": text,
        "tokens": tokens,
        "finished": now,
        "seed": seed,
        "censored": state in ("censored", "csam"),
        "gen_metadata": metadata,
    }
    with transaction.atomic():
        accepted = Job.objects.filter(id=job.id, state=Job.State.PROCESSING).update(**done)
        if not accepted:
            _accept_late(job, done)
        ledger_record_generation(
            requester_id=job.prompt.user_id,
            owner_id=job.server.owner_id,
            tokens=tokens,
            server_id=job.server_id,
            job_id=job.id,
            model=job.model,
            now=now,
        )
        _credit_server(job, tokens, now)
        Prompt.objects.filter(id=job.prompt_id).update(
            last_activity=now, expires_at=now + _expiry()
        )
        wakeups.notify_on_commit(wakeups.topic_for_prompt(job.prompt_id))
    logger.info("job %s done by server %s: %s tokens", job.id, job.server_id, tokens)
    return tokens


def _bare(entry: dict) -> dict:
    return {"type": entry.get("type"), "value": entry.get("value")}


def _accept_late(job: Job, done: dict) -> None:
    """Take a result for a job that is no longer processing, if the rules allow it.

    An abandoned job's result is still welcome while its slot waits for a server: take the
    slot back and accept. Otherwise explain why not (raising rolls the slot back too).
    """
    current = Job.objects.filter(id=job.id).values_list("state", flat=True).first()
    if current == Job.State.ABANDONED:
        slot_back = Prompt.objects.filter(
            id=job.prompt_id, state=Prompt.State.LIVE, waiting__gt=0
        ).update(
            waiting=F("waiting") - 1,
            # The reaper counted this job as a failure; it was only late.
            faulted_jobs=Greatest(F("faulted_jobs") - 1, Value(0)),
        )
        if slot_back and Job.objects.filter(id=job.id, state=current).update(**done):
            return
    if current == Job.State.DONE or Job.objects.filter(id=job.id, state=Job.State.DONE).exists():
        raise BadRequest(f"Job {job.id} was already submitted.", rc="DuplicateGen")
    raise NotFound(
        f"Job {job.id} ran out of time and its slot went to another server.", rc="AbortedGen"
    )


def _credit_server(job: Job, tokens: int, now: datetime) -> None:
    changes = {"tokens_generated": F("tokens_generated") + tokens}
    changes["requests_fulfilled"] = F("requests_fulfilled") + 1
    seconds = (now - job.started).total_seconds()
    if tokens and seconds > 0:
        sample = tokens / seconds
        weight = Server.SPEED_SMOOTHING
        # One UPDATE: every right-hand side sees the row as it was before this statement.
        changes["speed"] = Case(
            When(requests_fulfilled=0, then=Value(sample)),
            default=F("speed") * (1 - weight) + Value(sample * weight),
        )
    Server.objects.filter(pk=job.server_id).update(**changes)


def job_fault(*, job: Job, now: datetime | None = None) -> None:
    """A server gave up on its job: put the slot back in the queue."""
    now = now or timezone.now()
    with transaction.atomic():
        moved = Job.objects.filter(id=job.id, state=Job.State.PROCESSING).update(
            state=Job.State.FAULTED, finished=now
        )
        if not moved:
            if Job.objects.filter(id=job.id, state=Job.State.DONE).exists():
                raise BadRequest(f"Job {job.id} was already submitted.", rc="DuplicateGen")
            raise NotFound(f"Job {job.id} is no longer processing.", rc="AbortedGen")
        Server.objects.filter(pk=job.server_id).update(uncompleted_jobs=F("uncompleted_jobs") + 1)
        slot_return(prompt_id=job.prompt_id, now=now)
    logger.info("job %s faulted by server %s", job.id, job.server_id)


def slot_return(*, prompt_id: object, now: datetime) -> None:
    """Give a failed job's slot back; the MAX_JOB_FAILURES-th failure faults the prompt."""
    wakeups.notify_on_commit(wakeups.QUEUE)
    wakeups.notify_on_commit(wakeups.topic_for_prompt(prompt_id))
    Prompt.objects.filter(id=prompt_id, state=Prompt.State.LIVE).update(
        waiting=F("waiting") + 1, faulted_jobs=F("faulted_jobs") + 1, last_activity=now
    )
    faulted = Prompt.objects.filter(
        id=prompt_id,
        state=Prompt.State.LIVE,
        faulted_jobs__gte=settings.KOBOLDCLUSTER["MAX_JOB_FAILURES"],
    ).update(state=Prompt.State.FAULTED, waiting=0)
    if faulted:
        logger.info("prompt %s faulted after repeated job failures", prompt_id)


def jobs_reap(*, now: datetime | None = None) -> int:
    """Abandon the jobs past their deadline and put their slots back; return how many.

    A server that vanished never submits. Its job counts as a failure of the prompt (the
    MAX_JOB_FAILURES-th faults it) and against the server. Its result is still accepted if it
    arrives before the slot is handed out again (`_accept_late`).
    """
    now = now or timezone.now()
    overdue = Job.objects.filter(state=Job.State.PROCESSING, deadline__lt=now)
    reaped = 0
    for job_id, prompt_id, server_id in list(overdue.values_list("id", "prompt_id", "server_id")):
        with transaction.atomic():
            # Only from processing: the server may have submitted or failed it a moment ago.
            moved = overdue.filter(id=job_id).update(state=Job.State.ABANDONED, finished=now)
            if not moved:
                continue
            Server.objects.filter(pk=server_id).update(uncompleted_jobs=F("uncompleted_jobs") + 1)
            slot_return(prompt_id=prompt_id, now=now)
        reaped += 1
        logger.info("job %s of prompt %s abandoned by server %s", job_id, prompt_id, server_id)
    return reaped


@dataclass(frozen=True)
class PurgeResult:
    prompts: int
    jobs: int


def prompts_purge(*, now: datetime | None = None) -> PurgeResult:
    """Delete the expired prompts with their jobs: all of their text, and nothing of the ledger.

    Expired prompts are already invisible to every read; this makes them gone. The ledger
    keeps its entries (they hold job ids as plain values, not foreign keys).
    """
    now = now or timezone.now()
    expired = Prompt.objects.filter(expires_at__lte=now)
    prompts = jobs = 0
    while True:
        with transaction.atomic():
            batch = list(expired.order_by("expires_at").values_list("id", flat=True)[:PURGE_BATCH])
            if not batch:
                break
            # On PostgreSQL, lock the jobs before their prompts, in the order submit and the
            # reaper take them: the other order deadlocks with a submit in flight. Then check
            # again, under lock, that nothing revived a prompt since the first read.
            list(Job.objects.select_for_update().filter(prompt_id__in=batch).values_list("id"))
            batch = list(
                expired.select_for_update().filter(id__in=batch).values_list("id", flat=True)
            )
            # Cascades to the jobs and model rows. only("id"): the cascade loads the prompts
            # it deletes, and has no use for their text.
            _, deleted = Prompt.objects.filter(id__in=batch).only("id").delete()
            prompts += deleted.get(Prompt._meta.label, 0)
            jobs += deleted.get(Job._meta.label, 0)
    if prompts:
        _forget_deleted_bytes()
    return PurgeResult(prompts=prompts, jobs=jobs)


def _forget_deleted_bytes() -> None:
    """Make SQLite drop deleted text from the disk, not only from its tables.

    secure_delete (settings.py) zeroes the deleted rows in the pages, but the write-ahead log
    still holds earlier copies of those pages until it is overwritten. Checkpointing copies
    the zeroed pages into the database file and TRUNCATE empties the log. If readers keep it
    busy, the next purge tries again. PostgreSQL keeps deleted rows until VACUUM (README).
    """
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        busy, _, _ = cursor.fetchone()
    if busy:
        logger.warning("purge: the write-ahead log is busy; it is truncated on a later run")


@dataclass(frozen=True)
class Outlook:
    """Where a prompt stands (the AI Horde's status extras), from a few bounded queries."""

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
        """Tokens charged so far: those of the delivered generations."""
        return sum(job.tokens for job in self.generations)


def _live_prompt(prompt_id: object, now: datetime) -> Prompt:
    prompt = Prompt.objects.live(now).filter(id=prompt_id).first()
    if prompt is None:
        raise NotFound(f"Request {prompt_id} is unknown or has expired.", rc="RequestNotFound")
    return prompt


def _status(prompt: Prompt) -> PromptStatus:
    jobs = list(prompt.jobs.select_related("server").order_by("started", "id"))
    return PromptStatus(prompt=prompt, jobs=jobs)


def prompt_status(
    *, prompt_id: object, outlook: bool = False, now: datetime | None = None
) -> PromptStatus:
    """The prompt's progress (with `outlook`, also its place, wait and possibility).

    A poll is activity: it keeps the prompt alive.
    """
    now = now or timezone.now()
    prompt = _live_prompt(prompt_id, now)
    expiry = _expiry()
    # Write the new expiry only when it moves noticeably: a client polling every second
    # should not turn every poll into a write.
    if prompt.expires_at < now + expiry - expiry / 20:
        prompt.expires_at = now + expiry
        Prompt.objects.filter(pk=prompt.pk).update(last_activity=now, expires_at=prompt.expires_at)
    status = _status(prompt)
    if outlook:
        status.outlook = prompt_outlook(status=status, now=now)
    return status


def prompt_cancel(
    *, prompt_id: object, outlook: bool = False, now: datetime | None = None
) -> PromptStatus:
    """Stop handing out slots; jobs in flight may still finish and are paid."""
    now = now or timezone.now()
    prompt = _live_prompt(prompt_id, now)
    Prompt.objects.filter(pk=prompt.pk, state=Prompt.State.LIVE).update(
        state=Prompt.State.CANCELLED, waiting=0, last_activity=now, expires_at=now + _expiry()
    )
    prompt.refresh_from_db()
    wakeups.notify_on_commit(wakeups.topic_for_prompt(prompt.id))
    logger.info("prompt %s cancelled", prompt.id)
    status = _status(prompt)
    if outlook:
        status.outlook = prompt_outlook(status=status, now=now)
    return status


# How far down the queue the status counts (see Outlook.queue_position).
QUEUE_SCAN = 1000


def prompt_outlook(*, status: PromptStatus, now: datetime | None = None) -> Outlook:
    """The prompt's queue position, estimated wait and whether any server could serve it.

    Two queries: the queue prefix up to this prompt (bounded by QUEUE_SCAN) and the active
    servers that fit its limits.
    """
    now = now or timezone.now()
    prompt = status.prompt
    servers = list(able_servers(prompt=prompt, now=now))
    in_flight = [job for job in status.jobs if job.state == Job.State.PROCESSING]
    position, tokens_ahead, slots_ahead = 0, 0, 0
    if prompt.waiting > 0 and prompt.state == Prompt.State.LIVE:
        ahead = (
            Prompt.objects.queued(now)
            .ahead_of(prompt)
            .order_by("-sort_key", "created")
            .values("id")[: QUEUE_SCAN + 1]
        )
        found = Prompt.objects.filter(id__in=ahead).aggregate(
            count=Count("id"), tokens=Sum(F("max_length") * F("waiting")), slots=Sum("waiting")
        )
        # The prefix ends with this prompt: its length is the position, unless it was cut.
        position = min(found["count"] or 1, QUEUE_SCAN + 1)
        tokens_ahead, slots_ahead = found["tokens"] or 0, found["slots"] or 0
    threads = sum(server.threads for server in servers)
    speeds = [server.speed for server in servers if server.speed > 0]
    speed = sum(speeds) / len(speeds) if speeds else 0.0
    capacity = speed * min(threads, slots_ahead) or 1.0
    queue_wait = tokens_ahead / capacity
    flight_wait = max((_remaining(job, prompt.max_length, now) for job in in_flight), default=0.0)
    return Outlook(
        queue_position=position,
        wait_time=round(queue_wait + flight_wait),
        is_possible=bool(in_flight) or bool(servers) or prompt.waiting == 0,
    )


def _remaining(job: Job, max_length: int, now: datetime) -> float:
    """Seconds a job in flight should still need: by its server's speed, else its deadline."""
    elapsed = (now - job.started).total_seconds()
    speed = job.server.speed if job.server is not None else 0.0
    if speed > 0:
        return max(0.0, max_length / speed - elapsed)
    return max(0.0, (job.deadline - now).total_seconds())


def able_servers(*, prompt: Prompt, now: datetime | None = None) -> list[Server]:
    """The active servers that could serve `prompt` now (its models, limits and options).

    The same rules as pop (`_servable`), seen from the prompt's side: one query over the
    active servers that fit its lengths, the rest checked on those rows.
    """
    now = now or timezone.now()
    candidates = (
        Server.objects.active(now)
        .filter(max_length__gte=prompt.max_length)
        .filter(max_context_length__gte=prompt.max_context_length)
        .select_related("owner")
    )
    listed: set[object] = set()
    if prompt.workers != Prompt.Workers.ANY:
        listed = set(prompt.server_list.values_list("server_id", flat=True))
    return [server for server in candidates if _could_serve(server, prompt, listed)]


def _could_serve(server: Server, prompt: Prompt, listed: set[object]) -> bool:
    owners = server.owner_id == prompt.user_id
    if (server.maintenance or server.paused) and not owners:
        return False
    if not prompt.any_model and not set(prompt.models) & set(server.models):
        return False
    if prompt.workers == Prompt.Workers.ONLY and server.id not in listed:
        return False
    if prompt.workers == Prompt.Workers.EXCEPT and server.id in listed:
        return False
    if prompt.trusted_workers and not server.owner.trusted:
        return False
    if not prompt.slow_workers and _is_slow(server):
        return False
    return not prompt.softprompt or prompt.softprompt in server.softprompts
