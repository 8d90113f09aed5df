"""PostgreSQL's statements (`generations/stores/__init__.py`: the steps each database does its way).

PostgreSQL runs data-modifying CTEs: a statement that writes several tables is a transaction
of its own, without the round trips of BEGIN and COMMIT, and two statements can be sent in one
round trip. Its writers lock rows, so racing pops can pick the same prompt: a claim that lost
is tried again.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from django.conf import settings
from django.db import connection

from accounts.identity import LOCK_ACCOUNT_SQL
from accounts.models import User
from generations.claims import (
    CARRIED_TEXT,
    CARRIED_TOKENS,
    claim_in_transaction,
    claimed_job,
    claimed_prompt,
)
from generations.models import Job, Prompt
from generations.payment import (
    TOUCH_SQL,
    Delivery,
    credit_sql,
    done_params,
    done_set,
    ledger_params,
    ledger_sql,
    touch_due,
    touch_params,
)
from generations.sql import execute, fetch
from generations.sql import uuid_param as uid
from generations.vacuum import vacuum_after_purge
from servers.models import Server
from servers.services import Credentials

# --- A server's submit ---------------------------------------------------------------------


def accept_before_lookup(
    job_id: object, credentials: Credentials, done: dict, token_count: int | None, now: datetime
) -> Delivery | None:
    """Never: the lookup comes first, and then one statement accepts and pays
    (`accept_and_pay_in_one`); no statement is sent here."""
    return None


def accept_and_pay_in_one(delivery: Delivery, done: dict, now: datetime) -> bool:
    """Accept, pay, credit and touch in one statement; False if the job was not processing.

    Each data-modifying part reads `done`, so nothing is written unless the job was
    processing (then the caller goes the way of a late result).
    """
    job, tokens = delivery.job, done["tokens"]
    parts = [
        f"done AS (UPDATE generations_job SET {done_set()} WHERE id = %s "
        "AND state = 'processing' RETURNING id)",
        f"paid AS ({ledger_sql('done')})",
    ]
    credit, credit_params = credit_sql(
        delivery, tokens, now, done["text"], " AND EXISTS (SELECT 1 FROM done)"
    )
    parts.append(f"credit AS ({credit})")
    params = [*done_params(done), uid(job.id)]
    params += ledger_params(delivery, tokens, now)
    params += credit_params
    if touch_due(delivery, now):
        parts.append(f"touch AS ({TOUCH_SQL} AND EXISTS (SELECT 1 FROM done))")
        params += touch_params(delivery, now)
    return fetch(f"WITH {', '.join(parts)} SELECT COUNT(*) FROM done", params)[0][0] == 1


# --- A server's pop --------------------------------------------------------------------------


def claim(
    claim: str, params: list[object], server: Server, amount: int, now: datetime
) -> list[Job]:
    """One job: the claim and the job's INSERT in one statement (no BEGIN and COMMIT).
    Several: the claim's UPDATE and the jobs' INSERT in one transaction."""
    if amount != 1:
        return claim_in_transaction(claim, params, server, amount, now)
    rows = fetch(*_with_job_sql(claim, params, server, now))
    return [_job_from(rows[0], server, now)] if rows else []


def lost_race(picks: str, pick_params: list[object]) -> bool:
    """Whether the pick still finds a prompt: a racing pop took the slot of the prompt this
    one picked, between its pick and its update (READ COMMITTED re-checks the WHERE)."""
    return bool(fetch(f"SELECT {picks}", pick_params)[0][0])


def _with_job_sql(
    claim: str, params: list[object], server: Server, now: datetime
) -> tuple[str, list[object]]:
    """`claim` and its job's INSERT as one statement, which works out the job's model
    (Prompt.model_for) and deadline (Server.job_ttl) from the claimed row itself."""
    first = server.models[0] if server.models else ""
    model = (
        "CASE WHEN c.any_model THEN %s ELSE COALESCE((SELECT m.name FROM unnest(%s::text[]) "
        "WITH ORDINALITY AS m(name, i) WHERE c.models ? m.name ORDER BY m.i LIMIT 1), %s) END"
    )
    limits = settings.KOBOLDCLUSTER
    floor, ceiling = limits["JOB_TTL_FLOOR_SECONDS"], limits["JOB_TTL_MAX_SECONDS"]
    if server.speed <= 0:
        ttl, ttl_params = "%s", [floor]
    else:
        ttl = "trunc(LEAST(GREATEST(%s::float8, 2 * c.max_length / %s::float8), %s::float8))"
        ttl_params = [floor, server.speed, max(ceiling, floor)]
    sql = (
        f"WITH c AS ({claim}), j AS (INSERT INTO generations_job (id, prompt_id, server_id, "
        "model, state, started, deadline, text, tokens, censored, gen_metadata, carried_tokens) "
        f"SELECT %s, c.id, %s, {model}, 'processing', %s, "
        f"%s + make_interval(secs => ({ttl})::float8), {CARRIED_TEXT.format('c.continues')}, "
        f"0, false, '[]'::jsonb, {CARRIED_TOKENS.format('c.continues')} FROM c "
        "RETURNING id, model, deadline, text, carried_tokens) "
        "SELECT c.*, j.id, j.model, j.deadline, j.text, j.carried_tokens FROM c, j"
    )
    values = [uuid.uuid4(), server.id, first, list(server.models), first, now, now, *ttl_params]
    return sql, [*params, *values]


def _job_from(row: tuple, server: Server, now: datetime) -> Job:
    """The job `_with_job_sql` inserted, with its claimed prompt."""
    *claimed, job_id, model, deadline, text, carried_tokens = row
    prompt = claimed_prompt(claimed)
    return claimed_job(job_id, prompt, server, model, now, deadline, text, carried_tokens)


# --- A prompt comes in -----------------------------------------------------------------------


def sends_lock_with_insert() -> bool:
    """Yes, with Django's default client-side binding (a prepared statement holds only one)."""
    return not connection.settings_dict.get("OPTIONS", {}).get("server_side_binding")


def insert_prompt(
    insert: str, params: list[object], prompt: Prompt, lock_user: User | None = None
) -> bool:
    """The prompt's INSERT with its model names in the same statement; with `lock_user`, the
    account's lock and the INSERT sent together in one round trip (`_execute_after`)."""
    if prompt.models:
        insert = (
            f"WITH p AS ({insert} RETURNING id) INSERT INTO generations_promptmodel "
            "(prompt_id, name) SELECT p.id, m.name FROM p, unnest(%s::text[]) AS m(name)"
        )
        params = [*params, prompt.models]
    if lock_user is not None:
        return _execute_after(LOCK_ACCOUNT_SQL, [lock_user.pk], insert, params) > 0
    return execute(insert, params) > 0


def _execute_after(first_sql: str, first: list[object], sql: str, params: list[object]) -> int:
    """`first_sql`, then `sql`, sent together in one round trip; the rows `sql` changed.

    Outside a transaction, PostgreSQL runs the two as one implicit transaction, each
    statement with its own snapshot: `sql` sees what committed while `first_sql` waited for
    a lock. Saves the round trips of BEGIN, the second statement and COMMIT.
    """
    with connection.cursor() as cursor:
        cursor.execute(f"{first_sql}; {sql}", [*first, *params])
        cursor.nextset()
        return cursor.rowcount


# --- Expired prompts purged ------------------------------------------------------------------


def forget_deleted_text(purged_prompts: int) -> None:
    """PostgreSQL keeps deleted rows until VACUUM: after a large purge, vacuum the tables that
    held the text (`generations/vacuum.py`)."""
    vacuum_after_purge(purged_prompts)
