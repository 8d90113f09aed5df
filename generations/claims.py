"""A claim's statements that both databases share (`generations/queue.py` runs the claim).

What a claim's UPDATE returns about the prompt, and the INSERT of its jobs in the claim's
transaction (`claim_in_transaction`: every claim on SQLite, several jobs on PostgreSQL). A
continuation's job starts with the text of the job it continues (generations/handover.py),
read by the job's own INSERT: no statement more, and '' / 0 for a fresh start. PostgreSQL's
one-statement claim of one job (`generations/stores/postgresql.py`) returns and carries the
same.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from django.db import transaction

from generations.models import Job, Prompt
from generations.sql import as_json, as_uuid, dt_param, execute, fetch, json_param, uuid_param
from koboldcluster.rows import instance
from servers.models import Server

CLAIM_RETURNS = (
    "id, user_id, text, params, max_length, max_context_length, any_model, models, "
    "softprompt, batching, waiting, whole_context, continues"
)
CARRIED_TEXT = "COALESCE((SELECT k.text FROM generations_job k WHERE k.id = {}), '')"
CARRIED_TOKENS = (
    "COALESCE((SELECT k.carried_tokens + k.tokens FROM generations_job k WHERE k.id = {}), 0)"
)


def claimed_prompt(row: tuple | list) -> Prompt:
    """The prompt a claim returned (CLAIM_RETURNS)."""
    return instance(
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
        whole_context=bool(row[11]),
        continues=as_uuid(row[12]) if row[12] is not None else None,
    )


def claim_in_transaction(
    claim: str, params: list[object], server: Server, amount: int, now: datetime
) -> list[Job]:
    """The claim's UPDATE and its jobs' INSERT in one transaction; [] when nothing was claimed."""
    with transaction.atomic():
        rows = fetch(claim, params)
        return create_jobs(rows[0], server, amount, now) if rows else []


def create_jobs(row: tuple, server: Server, amount: int, now: datetime) -> list[Job]:
    """The claimed prompt's job(s), inserted in the claim's transaction."""
    prompt = claimed_prompt(row)
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
    ids = [uuid.uuid4() for _ in range(1 + more)]
    carried = uuid_param(prompt.continues) if prompt.continues else None
    row = (
        f"(%s, %s, %s, %s, 'processing', %s, %s, {CARRIED_TEXT.format('%s')}, 0, %s, %s, "
        f"{CARRIED_TOKENS.format('%s')})"
    )
    values: list[object] = []
    for job_id in ids:
        values += [
            uuid_param(job_id), uuid_param(prompt.id), uuid_param(server.id), model,
            dt_param(now), dt_param(deadline), carried, False, json_param([]), carried,
        ]  # fmt: skip
    inserted = fetch(
        "INSERT INTO generations_job (id, prompt_id, server_id, model, state, started, "
        f"deadline, text, tokens, censored, gen_metadata, carried_tokens) VALUES "
        f"{', '.join([row] * len(ids))} RETURNING text, carried_tokens",
        values,
    )
    return [
        claimed_job(job_id, prompt, server, model, now, deadline, text, carried_tokens)
        for job_id, (text, carried_tokens) in zip(ids, inserted, strict=True)
    ]


def claimed_job(
    job_id: object,
    prompt: Prompt,
    server: Server,
    model: str,
    now: datetime,
    deadline: datetime,
    text: str,
    carried_tokens: int,
) -> Job:
    """A job a claim inserted, with what its INSERT returned (a continuation's carried text)."""
    return instance(
        Job,
        id=job_id,
        prompt=prompt,
        server=server,
        model=model,
        started=now,
        deadline=deadline,
        text=text,
        carried_tokens=carried_tokens,
    )
