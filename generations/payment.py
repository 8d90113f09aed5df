"""Paying for an accepted job: the ledger pair, the server's credit and record, the prompt kept
alive, written in the transaction that accepts it (`generations/delivery.py`).

`pay` writes them in a few statements in the caller's transaction (SQLite always, PostgreSQL
for a late result); PostgreSQL's store puts the same statements with the acceptance in one
statement of data-modifying CTEs (`generations/stores/postgresql.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from generations.models import Job, prompt_lifetime
from generations.sql import dt_param, execute, json_param
from generations.sql import uuid_param as uid
from koboldcluster.clients import current_client
from servers.models import Server
from servers.records import delivered_sql, result_facts


@dataclass(frozen=True)
class Delivery:
    """A job being submitted, with what paying for it needs (read in one statement)."""

    job: Job
    requester_id: int
    owner_id: int  # of the server, when the job was looked up
    max_length: int
    prompt_expires_at: datetime
    # Whether kudos move for it (the owner earns them, the requester pays them): not for its
    # own prompts, nor for prompts sent from the submitting server's address block.
    earns: bool = True
    # The end of the prompt's text: the server's record tells prompts apart by it.
    prompt_tail: str = ""
    # A continuation's job (generations/handover.py): its text begins with earlier servers'.
    continues: bool = False


def earns(requester_id: int, owner_id: int, origin: str) -> bool:
    """A server serving its owner, or requests from its own address (another account, the
    anonymous one), makes priority out of nothing: such a job moves no kudos either way
    (its tokens are still counted as used and contributed). As the AI Horde pays no kudos
    to a worker for its owner's own requests."""
    return requester_id != owner_id and not (origin and origin == current_client())


def done_set(tokens: str = "%s") -> str:
    """The SET list of an accepted job (`tokens`: the SQL of its reward, a parameter by
    default). The text is appended: a continuation's job holds the text it continues
    (generations/handover.py)."""
    return (
        f"state = 'done', text = text || %s, tokens = {tokens}, finished = %s, seed = %s, "
        "censored = %s, gen_metadata = %s, prompt_tokens = %s, prompt_trimmed = %s"
    )


def done_params(done: dict, tokens_params: list[object] | None = None) -> list[object]:
    """The values of `done_set` (`tokens_params`: those of its `tokens` expression)."""
    return [
        done["text"],
        *([done["tokens"]] if tokens_params is None else tokens_params),
        dt_param(done["finished"]),
        done["seed"],
        done["censored"],
        json_param(done["gen_metadata"]),
        done["prompt_tokens"],
        done["prompt_trimmed"],
    ]


def ledger_sql(source: str) -> str:
    """INSERT of the usage and contribution pair, once per row of `source`."""
    columns = "created, user_id, kind, tokens, kudos, server_id, job_id, model"
    pair = " UNION ALL ".join(
        f"SELECT %s, %s, '{kind}', %s, %s, %s, %s, %s FROM {source}"
        for kind in ("usage", "contribution")
    )
    return f"INSERT INTO accounts_ledgerentry ({columns}) {pair}"


def ledger_params(delivery: Delivery, tokens: int, now: datetime) -> list[object]:
    job, kudos = delivery.job, tokens if delivery.earns else 0
    usage = [dt_param(now), delivery.requester_id, tokens, -kudos]
    contribution = [dt_param(now), delivery.owner_id, tokens, kudos]
    tail = [uid(job.server_id), uid(job.id), job.model]
    return [*usage, *tail, *contribution, *tail]


def credit_sql(
    delivery: Delivery, tokens: int, now: datetime, text: str, condition: str = ""
) -> tuple[str, list[object]]:
    """The server's credit and its record (servers/records.py) as one UPDATE: every
    right-hand side sees the row as it was before this statement."""
    job = delivery.job
    seconds = (now - job.started).total_seconds()
    measured = tokens > 0 and seconds > 0
    sample = tokens / seconds if measured else 0.0
    weight = Server.SPEED_SMOOTHING
    facts = result_facts(
        text=text, tokens=tokens, seconds=seconds, model=job.model, prompt=delivery.prompt_tail
    )
    record, record_params = delivered_sql(facts)
    sql = (
        "UPDATE servers_server SET tokens_generated = tokens_generated + %s, "
        "requests_fulfilled = requests_fulfilled + 1, speed = CASE WHEN %s THEN speed "
        f"WHEN requests_fulfilled = 0 THEN %s ELSE speed * %s + %s END, {record} "
        f"WHERE id = %s{condition}"
    )
    params = [tokens, not measured, sample, 1 - weight, sample * weight, *record_params]
    return sql, [*params, uid(job.server_id)]


def touch_due(delivery: Delivery, now: datetime) -> bool:
    """Whether the prompt's expiry should move (a write only when it moves noticeably)."""
    expiry = prompt_lifetime()
    return delivery.prompt_expires_at < now + expiry - expiry / 20


def touch_params(delivery: Delivery, now: datetime) -> list[object]:
    return [dt_param(now), dt_param(now + prompt_lifetime()), uid(delivery.job.prompt_id)]


TOUCH_SQL = "UPDATE generations_prompt SET last_activity = %s, expires_at = %s WHERE id = %s"


def pay(delivery: Delivery, tokens: int, now: datetime, text: str) -> None:
    """Ledger pair, server credit and record, and prompt activity, in the caller's
    transaction."""
    execute(ledger_sql("(SELECT 1) one"), ledger_params(delivery, tokens, now))
    execute(*credit_sql(delivery, tokens, now, text))
    if touch_due(delivery, now):
        execute(TOUCH_SQL, touch_params(delivery, now))
