"""SQLite's statements (`generations/stores/__init__.py`: the steps each database does its way).

SQLite has no data-modifying CTEs and no row locks: a writer holds the whole database from
its first write to its commit (BEGIN IMMEDIATE), so these use cases write in a few statements
of one short transaction, and nothing slow may happen inside it.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from django.db import connection, transaction

from accounts.identity import USER_COLUMNS, password_check_is_quick, user_from_row, verify_owner
from accounts.models import User
from generations.claims import claim_in_transaction
from generations.models import Job, Prompt, reward_tokens, reward_tokens_sql
from generations.payment import Delivery, done_params, done_set, earns, pay
from generations.sql import as_uuid, dt_param, execute, fetch, uuid_param
from koboldcluster.rows import aware, instance
from servers.models import Server
from servers.records import PROMPT_TAIL
from servers.services import Credentials

logger = logging.getLogger(__name__)

# --- A server's submit ---------------------------------------------------------------------

_PROMPT_OF_JOB = "(SELECT {} FROM generations_prompt p WHERE p.id = generations_job.prompt_id)"
_RETURNED_PROMPT = ", ".join(
    _PROMPT_OF_JOB.format(c)
    for c in ("user_id", "max_length", "expires_at", "origin", f"substr(text, -{PROMPT_TAIL})")
)
_ACCEPT_RETURNING = (
    "UPDATE generations_job SET {done} "
    "WHERE id = %s AND state = 'processing' AND EXISTS (SELECT 1 FROM generations_prompt p "
    "WHERE p.id = generations_job.prompt_id AND p.expires_at > %s) "
    f"RETURNING prompt_id, server_id, model, started, tokens, carried_tokens, {_RETURNED_PROMPT}, "
    f"(SELECT json_array({USER_COLUMNS}) FROM servers_server s JOIN accounts_user u "
    "ON u.id = s.owner_id WHERE s.id = generations_job.server_id)"
)


def accept_before_lookup(
    job_id: object, credentials: Credentials, done: dict, token_count: int | None, now: datetime
) -> Delivery | None:
    """Accept a processing job of a live prompt in the statement that reads what paying for
    it needs, check that the caller owns its server, and pay, in one transaction.

    None, with nothing written, when the job was not processing, or is unknown or expired
    (the lookup then tells which), or when the owner's check would hash a password: not while
    holding SQLite's one write lock (the lookup checks it first, outside the transaction).
    A wrong owner raises and rolls the acceptance back. The reward depends on the prompt's
    max_length, so the statement works it out itself (`reward_tokens_sql`); a lookup first
    would be one statement more per submit.
    """
    reward, reward_params = reward_tokens_sql(done["text"], token_count, _PROMPT_OF_JOB)
    with transaction.atomic():
        rows = fetch(
            _ACCEPT_RETURNING.format(done=done_set(reward)),
            [*done_params(done, reward_params), uuid_param(job_id), dt_param(now)],
        )
        if not rows:
            return None
        owner = user_from_row(json.loads(rows[0][-1]))
        if credentials.api_user is None and not password_check_is_quick(
            owner, credentials.password
        ):
            transaction.set_rollback(True)  # nothing written: the lookup checks it first
            return None
        verify_owner(owner=owner, password=credentials.password, api_user=credentials.api_user)
        delivery = _delivery_from(job_id, rows[0][:-1], owner, done, token_count)
        pay(delivery, delivery.job.tokens, now, done["text"])
        return delivery


def _delivery_from(
    job_id: object, row: tuple, owner: User, done: dict, token_count: int | None
) -> Delivery:
    """The accepted job and what paying for it needs, from the acceptance's returned row."""
    prompt_id, server_id, model, started, tokens, carried, *prompt_row = row
    requester, max_length, expires, origin, tail = prompt_row
    expected, distrust = reward_tokens(done["text"], max_length, token_count)
    if distrust:
        logger.info("job %s: token_count not used (%s); counted %s", job_id, distrust, tokens)
    assert tokens == expected, (tokens, expected)  # the SQL and the rule agree (tested)
    job = instance(
        Job,
        id=as_uuid(job_id),
        prompt_id=as_uuid(prompt_id),
        server_id=as_uuid(server_id),
        model=model,
        started=aware(started),
        tokens=tokens,
    )
    paid = earns(requester, owner.pk, origin)
    return Delivery(
        job, requester, owner.pk, max_length, aware(expires), paid, tail, continues=carried > 0
    )


def accept_and_pay_in_one(delivery: Delivery, done: dict, now: datetime) -> bool:
    """Never: without data-modifying CTEs the caller accepts and pays in steps, in one
    transaction (no statement is sent)."""
    return False


# --- A server's pop --------------------------------------------------------------------------


def claim(
    claim: str, params: list[object], server: Server, amount: int, now: datetime
) -> list[Job]:
    """The claim's UPDATE and its jobs' INSERT in one transaction."""
    return claim_in_transaction(claim, params, server, amount, now)


def lost_race(picks: str, pick_params: list[object]) -> bool:
    """Never: a claim runs under the database's write lock, so no pop takes a slot between
    another's pick and its claim (no statement is sent)."""
    return False


# --- A prompt comes in -----------------------------------------------------------------------


def sends_lock_with_insert() -> bool:
    """No: one statement at a time. The prompt is inserted in a transaction, which holds the
    database's one write lock (so no account lock is needed)."""
    return False


def insert_prompt(
    insert: str, params: list[object], prompt: Prompt, lock_user: User | None = None
) -> bool:
    """The prompt's INSERT, then one for its model names (`lock_user` needs no lock: the
    caller's transaction holds the database's write lock)."""
    if execute(insert, params) != 1:
        return False
    if prompt.models:
        rows = ", ".join(["(%s, %s)"] * len(prompt.models))
        names = [value for name in prompt.models for value in (uuid_param(prompt.id), name)]
        execute(f"INSERT INTO generations_promptmodel (prompt_id, name) VALUES {rows}", names)
    return True


# --- Expired prompts purged ------------------------------------------------------------------


def forget_deleted_text(purged_prompts: int) -> None:
    """Make SQLite drop deleted text from the disk, not only from its tables.

    secure_delete (settings.py) zeroes the deleted rows in the pages, but the write-ahead log
    still holds earlier copies of those pages until it is overwritten. Checkpointing copies
    the zeroed pages into the database file and TRUNCATE empties the log. If readers keep it
    busy, the next purge tries again.
    """
    if connection.in_atomic_block:
        return
    with connection.cursor() as cursor:
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        busy, _, _ = cursor.fetchone()
    if busy:
        logger.warning("purge: the write-ahead log is busy; it is truncated on a later run")
