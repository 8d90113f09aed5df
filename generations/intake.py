"""Prompts come in: a request for `n` generations is checked and queued with its priority.

`prompt_create` stores a prompt with its waiting slots in one statement that also checks the
user's concurrency (a user's waiting slots) and computes the priority from the exact ledger
balance (DESIGN §4.1, §4.3), then tells waiting servers (`generations.events`).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts.identity import lock_account
from accounts.models import User
from accounts.selectors import balance_sql
from generations import events
from generations import limits as client_limits
from generations.idempotency import first_prompt
from generations.matching import PromptFacts
from generations.models import Prompt, PromptWorker, prompt_lifetime
from generations.sql import dt_param, fetch, greatest, json_cast, json_param, least, uuid_param
from generations.stores import store
from koboldcluster.clients import current_public_client
from koboldcluster.errors import BadRequest, NotFound, TooManyRequests
from koboldcluster.rows import instance
from servers.models import Server

logger = logging.getLogger(__name__)

# A slot frees when a server takes one, which we cannot foresee: ask for a short pause.
TOO_MANY_PROMPTS_RETRY_AFTER = 10


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
    # The client named no context: each job gets its server's whole context (Job.payload).
    whole_context: bool = False
    genkey: str = ""  # KoboldCpp's name for the generation, for check and abort
    # The client's Idempotency-Key: a retry with it gets the first prompt (`prompt_create`).
    idempotency_key: str = ""

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

    429 `TooManyPrompts` when it would take the user over their waiting slots limit. With an
    `idempotency_key`, the caller's live prompt created with that key, if any, is returned
    instead (generations/idempotency.py).
    """
    now = now or timezone.now()
    if not request.batching and request.n > 1 and not user.trusted:
        raise BadRequest(
            "Only trusted accounts may disable batching for n > 1.", rc="RequiresTrust"
        )
    client_limits.refuse_large_n(user, request.n)
    server_ids = _known_servers(request.server_ids)
    prompt = _new_prompt(user, request, server_ids, now)
    queued = _queue(prompt, user, server_ids, now)
    if queued is not prompt:
        return queued  # the caller's earlier prompt with the same idempotency key
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


def _new_prompt(
    user: User, request: GenerationRequest, server_ids: list[object], now: datetime
) -> Prompt:
    """The prompt a request makes, not yet saved."""
    listed = Prompt.Workers.EXCEPT if request.servers_excluded else Prompt.Workers.ONLY
    return instance(
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
        client=client_limits.prompt_client(user),
        origin=current_public_client() or "",
        softprompt=request.softprompt,
        trusted_workers=request.trusted_workers,
        slow_workers=request.slow_workers,
        workers=listed if server_ids else Prompt.Workers.ANY,
        nsfw=request.nsfw,
        batching=request.batching,
        whole_context=request.whole_context,
        genkey=request.genkey,
        idempotency_key=request.idempotency_key,
        created=now,
        last_activity=now,
        expires_at=now + prompt_lifetime(),
    )


def _queue(prompt: Prompt, user: User, server_ids: list[object], now: datetime) -> Prompt:
    """Insert the prompt within the user's waiting slots limit, and return it; or, with an
    idempotency key already used by a live prompt of the caller's, return that one."""
    # Two submits of one user at once must not both see room for one more: the account's
    # row is locked first. Not the anonymous user's: every caller without a key shares it, and
    # making all of them wait for each other is the lock convoy the AI Horde suffered.
    # (SQLite's transaction already holds its only write lock.)
    lock = not user.is_anonymous_user
    if prompt.idempotency_key:
        first = first_prompt(prompt, now)
        if first is not None:
            return first
    if not server_ids and not prompt.idempotency_key and store().sends_lock_with_insert():
        # PostgreSQL, in one round trip without BEGIN and COMMIT: the lock and the INSERT are
        # sent together, one implicit transaction in which the INSERT, a statement of its
        # own, reads the user's waiting slots after the lock is held.
        if not _insert_within_limit(prompt, user, now, lock=lock):
            _refuse(prompt, user, prompt.n, now)
        events.queue_changed(PromptFacts.of(prompt, frozenset()))
    else:
        try:
            _insert_in_transaction(prompt, user, server_ids, lock=lock, now=now)
        except IntegrityError:
            # A retry with the same key inserted it a moment before: that one is the answer.
            first = first_prompt(prompt, now) if prompt.idempotency_key else None
            if first is None:
                raise
            return first
    return prompt


def _insert_in_transaction(
    prompt: Prompt, user: User, server_ids: list[object], *, lock: bool, now: datetime
) -> None:
    with transaction.atomic():
        if lock:
            lock_account(user)
        if not _insert_within_limit(prompt, user, now):
            _refuse(prompt, user, prompt.n, now)
        if server_ids:
            PromptWorker.objects.bulk_create(
                PromptWorker(prompt=prompt, server_id=i) for i in server_ids
            )
        events.queue_changed(PromptFacts.of(prompt, frozenset(server_ids)))


def _refuse(prompt: Prompt, user: User, n: int, now: datetime) -> None:
    """429: over the client's limit, or else over the user's (the INSERT found no room)."""
    client_limits.refuse_over_client_limit(prompt.client, n, now)
    _refuse_over_limit(user, n, now)


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
    "batching, created, last_activity, expires_at, models, client, origin, whole_context, "
    "genkey, idempotency_key, sort_key"
)
_WAITING_OF_USER = (
    "SELECT COALESCE(SUM(q.waiting), 0) FROM generations_prompt q WHERE q.user_id = %s "
    "AND q.state = 'live' AND q.waiting > 0 AND q.expires_at > %s"
)


def _insert_within_limit(prompt: Prompt, user: User, now: datetime, *, lock: bool = False) -> bool:
    """INSERT the prompt (and its model names) if the user's waiting slots leave room.

    One statement reads the user's waiting slots and balance and writes the row; on
    PostgreSQL the model names go in the same statement, and with `lock` the account's lock
    goes first in the same round trip (`Store.sends_lock_with_insert`). False when over the
    limit.
    """
    key_sql, key_params = _sort_key_sql(user, now)
    values = [
        uuid_param(prompt.id), user.pk, prompt.text, json_param(prompt.params),
        prompt.any_model, prompt.n, prompt.waiting, prompt.max_length,
        prompt.max_context_length, Prompt.State.LIVE, 0, prompt.client_agent,
        prompt.softprompt, prompt.trusted_workers, prompt.slow_workers, prompt.workers,
        prompt.nsfw, prompt.batching, dt_param(now), dt_param(now),
        dt_param(prompt.expires_at), json_param(prompt.models), prompt.client, prompt.origin,
        prompt.whole_context, prompt.genkey, prompt.idempotency_key,
    ]  # fmt: skip
    json = json_cast()
    row = ", ".join(["%s"] * 3 + [json] + ["%s"] * 17 + [json] + ["%s"] * 5)
    insert = (
        f"INSERT INTO generations_prompt ({_PROMPT_COLUMNS}) SELECT {row}, {key_sql} "
        f"WHERE ({_WAITING_OF_USER}) + %s <= %s"
    )
    params = [*values, *key_params, user.pk, dt_param(now), prompt.n, user.concurrency_limit()]
    if prompt.client:  # without credentials: the client's limit too (generations/limits.py)
        within, within_params = client_limits.client_within_limit_sql(
            prompt.client, prompt.n, dt_param(now)
        )
        insert += f" AND {within}"
        params += within_params
    # The model names: in the same statement (PostgreSQL) or the next (SQLite).
    return store().insert_prompt(insert, params, prompt, lock_user=user if lock else None)


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
