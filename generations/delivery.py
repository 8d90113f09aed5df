"""A server delivers: its generation is accepted exactly once and paid in the same transaction.

`job_submit` is the whole use case for every API: find the job and check that the caller
owns its server, then either give the slot back (`faulted`) or store the text, append the
usage and contribution pair to the ledger, credit the server and keep the prompt alive. The
exactly-once guard is the conditional UPDATE `… WHERE state = 'processing'`. Where the
database can, fewer statements do the same (`generations/stores/`): SQLite accepts in the
statement that reads the job, PostgreSQL accepts and pays in one statement after the lookup;
otherwise a few in one transaction (the payment's statements: `generations/payment.py`).
"""

from __future__ import annotations

import logging
from datetime import datetime

from django.db import transaction
from django.db.models import F, Value
from django.db.models.functions import Concat, Greatest
from django.utils import timezone

from accounts.identity import USER_COLUMNS, user_from_row, verify_owner
from generations import events
from generations.handover import continuation_cut_at_stops, job_fault
from generations.models import Job, Prompt, reward_tokens
from generations.payment import Delivery, done_params, done_set, earns, pay
from generations.progress_store import progress_drop
from generations.sql import as_uuid, dt_param, execute, fetch, right
from generations.sql import uuid_param as uid
from generations.stores import store
from koboldcluster.errors import BadRequest, NotFound
from koboldcluster.rows import aware, instance
from servers.records import PROMPT_TAIL
from servers.services import Credentials

logger = logging.getLogger(__name__)

# What a server may report about a generation (the AI Horde's text metadata: only this).
CSAM_METADATA = {"type": "censorship", "value": "csam"}


_LOOKUP = (
    "SELECT j.id, j.prompt_id, j.server_id, j.model, j.started, p.user_id, p.max_length, "
    # A processing job's text is a continuation's carried text (else ""); NULL once the job
    # ended: then it is the whole generation, which a late progress post must not show.
    "p.expires_at, p.origin, CASE WHEN j.state = 'processing' THEN j.text END, "
    f"{{tail}}, {USER_COLUMNS} FROM generations_job j "
    "JOIN generations_prompt p ON p.id = j.prompt_id "
    "JOIN servers_server s ON s.id = j.server_id JOIN accounts_user u ON u.id = s.owner_id "
    "WHERE j.id = %s AND p.expires_at > %s"
)


def delivery_for(*, job_id: object, credentials: Credentials, now: datetime) -> Delivery:
    """The job `job_id` if the caller owns its server: 404 when unknown or gone, 401/403 else."""
    # The end of the prompt's text: the server's record tells prompts apart by it.
    rows = fetch(_LOOKUP.format(tail=right("p.text", PROMPT_TAIL)), [uid(job_id), dt_param(now)])
    if not rows:
        raise NotFound(f"Job {job_id} is unknown or has expired.", rc="InvalidJobID")
    row = rows[0]
    owner = user_from_row(row[11:])
    verify_owner(owner=owner, password=credentials.password, api_user=credentials.api_user)
    job = instance(
        Job,
        id=as_uuid(row[0]),
        prompt_id=as_uuid(row[1]),
        server_id=as_uuid(row[2]),
        model=row[3],
        started=aware(row[4]),
        # A continuation's carried text (generations/handover.py), else ""; None: it ended.
        text=row[9],
    )
    return Delivery(
        job,
        requester_id=row[5],
        owner_id=owner.pk,
        max_length=row[6],
        prompt_expires_at=aware(row[7]),
        earns=earns(row[5], owner.pk, row[8]),
        continues=bool(row[9]),
        prompt_tail=row[10],
    )


def job_submit(
    *,
    job_id: object,
    credentials: Credentials,
    text: str,
    state: str = "ok",
    seed: int | None = None,
    gen_metadata: list[dict] | None = None,
    token_count: int | None = None,
    prompt_tokens: int | None = None,
    prompt_trimmed: int = 0,
    now: datetime | None = None,
) -> int:
    """Accept a generation exactly once and pay for it; return the reward in tokens.

    `token_count` is the server's own count of the generated tokens: paid when plausible
    (`reward_tokens`), else the cluster counts. `prompt_tokens` and `prompt_trimmed` are the
    backend's count of the prompt as the bridge sent it and the tokens it cut from its front
    to fit the backend's context; stored with the text, in the same statement.

    `state="faulted"` gives the slot back to the queue and pays nothing. `censored` and
    `csam` are accepted and paid like `ok` (the server did the work, and used tokens always
    equal contributed tokens); the status shows them as such.
    """
    now = now or timezone.now()
    done = _done(text, state, seed, gen_metadata, prompt_tokens, prompt_trimmed, now)
    delivery = None
    if state != Job.State.FAULTED:  # SQLite: accepted and paid before any lookup, if it can
        delivery = store().accept_before_lookup(job_id, credentials, done, token_count, now)
    if delivery is None:
        delivery = delivery_for(job_id=job_id, credentials=credentials, now=now)
        if state == Job.State.FAULTED:
            job_fault(job=delivery.job, now=now, text=text)
            return 0
        _accept_and_pay(delivery, done, token_count, now)
    job = delivery.job
    if delivery.continues:  # rare: stop sequences apply to the joined text
        continuation_cut_at_stops(job.id)
    progress_drop(job.prompt_id)  # the stored generation replaces the text so far
    events.prompt_changed(job.prompt_id)
    logger.info("job %s done by server %s: %s tokens", job.id, job.server_id, job.tokens)
    return job.tokens


def _done(
    text: str,
    state: str,
    seed: int | None,
    gen_metadata: list[dict] | None,
    prompt_tokens: int | None,
    prompt_trimmed: int,
    now: datetime,
) -> dict:
    """What an accepted job's row becomes (`done_set`; its tokens come with the reward)."""
    metadata = list(gen_metadata or [])
    if state == "csam" and CSAM_METADATA not in [_bare(m) for m in metadata]:
        metadata.append(dict(CSAM_METADATA))
    return {
        "state": Job.State.DONE,
        "text": text,
        "finished": now,
        "seed": seed,
        "censored": state in ("censored", "csam"),
        "gen_metadata": metadata,
        "prompt_tokens": prompt_tokens,
        "prompt_trimmed": prompt_trimmed,
    }


def _accept_and_pay(delivery: Delivery, done: dict, token_count: int | None, now: datetime) -> None:
    """Accept a looked-up job, on time or late, and pay its reward, all or nothing."""
    job = delivery.job
    tokens, distrust = reward_tokens(done["text"], delivery.max_length, token_count)
    if distrust:
        logger.info("job %s: token_count not used (%s); counted %s", job.id, distrust, tokens)
    job.tokens = done["tokens"] = tokens
    # PostgreSQL: one statement, a transaction of its own (no BEGIN and COMMIT round trips).
    if store().accept_and_pay_in_one(delivery, done, now):
        return
    with transaction.atomic():
        if not _accept(job, done):
            _accept_late(job, done)
        pay(delivery, tokens, now, done["text"])


def _bare(entry: dict) -> dict:
    return {"type": entry.get("type"), "value": entry.get("value")}


def _accept(job: Job, done: dict) -> bool:
    """The exactly-once step: only a processing job becomes done."""
    return (
        execute(
            f"UPDATE generations_job SET {done_set()} WHERE id = %s AND state = 'processing'",
            [*done_params(done), uid(job.id)],
        )
        == 1
    )


def _accept_late(job: Job, done: dict) -> None:
    """Take a result for a job that is no longer processing, if the rules allow it.

    An abandoned job's result is still welcome while its slot waits for a server: take the
    slot back and accept. Not once its text so far was kept and paid (generations/handover.py):
    its slot continues from that text. Otherwise explain why not (raising rolls the slot back
    too).
    """
    current, kept = Job.objects.filter(id=job.id).values_list("state", "tokens").first() or (
        None,
        0,
    )
    if current == Job.State.ABANDONED and not kept:
        slot_back = Prompt.objects.filter(
            id=job.prompt_id, state=Prompt.State.LIVE, waiting__gt=0
        ).update(
            waiting=F("waiting") - 1,
            # The reaper counted this job as a failure; it was only late.
            faulted_jobs=Greatest(F("faulted_jobs") - 1, Value(0)),
        )
        appended = {**done, "text": Concat(F("text"), Value(done["text"]))}
        if slot_back and Job.objects.filter(id=job.id, state=current).update(**appended):
            return
    if current == Job.State.DONE or Job.objects.filter(id=job.id, state=Job.State.DONE).exists():
        raise BadRequest(f"Job {job.id} was already submitted.", rc="DuplicateGen")
    if kept:
        raise NotFound(
            f"Job {job.id} stalled; its text so far was kept and paid, and another server "
            "continues it.",
            rc="AbortedGen",
        )
    raise NotFound(
        f"Job {job.id} ran out of time and its slot went to another server.", rc="AbortedGen"
    )
