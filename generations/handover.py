"""A job given back after it produced text is continued, not restarted (issue 25).

A job ends without a submit when its server gives it back (`faulted`, with or without its
text so far), misses its deadline or stalls (generations/lifecycle.py). Its slot goes back
to the queue (`slot_return`), and the MAX_JOB_FAILURES-th failure faults the prompt.

When such a job had produced text (its server's latest progress, or the text of its faulted
submit) and its prompt asks for one generation, that text is kept: stored on the job row,
which the purge deletes with the prompt like any generation, and paid to the job's server
in the same transaction (the ledger's usage and contribution pair, as a submit's). The
prompt's slot comes back as a continuation (`Prompt.continues`): the next server's job
starts with the kept text (`Job.carried_tokens` says what it is worth), its payload is the
prompt followed by that text with the remaining length, and its submit appends to it. A
kept hand-over advances the generation by at least one token, so it does not count as a
failure of the prompt. When the kept text already used the whole max_length, it is the
generation: the job is done.

The prompt's stop sequences apply to the whole: kept text that holds one is the generation
(cut after it, as KoboldAI keeps it), and a continuation's stored text is cut at the first one
even when it spans the hand-over, which the next server's backend could not see.

A continuation goes preferably to a server of the same model: a prompt that took any model
is narrowed to the model of the kept text when another active server serves it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import LedgerEntry
from generations import events
from generations.models import Job, Prompt, PromptModel, count_tokens
from generations.progress_store import progress_drop, progress_text
from generations.stops import cut_at_stop
from koboldcluster.clients import current_client
from koboldcluster.errors import BadRequest, NotFound
from servers.models import Server
from servers.records import record_failure

logger = logging.getLogger(__name__)


def slot_return(*, prompt_id: object, now: datetime) -> None:
    """Give a failed job's slot back; the MAX_JOB_FAILURES-th failure faults the prompt."""
    Prompt.objects.filter(id=prompt_id, state=Prompt.State.LIVE).update(
        waiting=F("waiting") + 1, faulted_jobs=F("faulted_jobs") + 1, last_activity=now
    )
    faulted = Prompt.objects.filter(
        id=prompt_id,
        state=Prompt.State.LIVE,
        faulted_jobs__gte=settings.KOBOLDCLUSTER["MAX_JOB_FAILURES"],
    ).update(state=Prompt.State.FAULTED, waiting=0)
    events.queue_changed()
    events.prompt_changed(prompt_id)
    if faulted:
        logger.info("prompt %s faulted after repeated job failures", prompt_id)


@dataclass(frozen=True)
class TextSoFar:
    """What a job produced before it ended: `text` is the whole text so far (a progress
    post's, which begins with any carried text) or only the job's own part (a submit's)."""

    text: str
    whole: bool


def job_give_back(
    *,
    job_id: object,
    prompt_id: object,
    server_id: object,
    state: str,
    now: datetime,
    submitted: str = "",
    by_its_server: bool = False,
) -> bool:
    """End a processing job that will not be submitted (`state`: faulted or abandoned),
    keeping and paying its text so far when the generation can continue from it; False
    when it was no longer processing (submitted or given back a moment ago).

    `submitted` is the text of a faulted submit; without it, the job's latest progress is
    its text so far. `by_its_server`: the job's server asked (a faulted submit), so the
    request's address tells whether the server serves its own address block (no kudos)."""
    with transaction.atomic():
        moved = Job.objects.filter(id=job_id, state=Job.State.PROCESSING).update(
            state=state, finished=now
        )
        if not moved:
            return False
        # Read once the job is no longer processing: a progress post stored before this
        # is seen, and one stored after it finds its job gone and removes its text.
        so_far = _text_so_far(job_id, prompt_id, submitted)
        abandoned = state == Job.State.ABANDONED
        if so_far is None or not _keep(
            job_id, so_far, now, by_its_server=by_its_server, abandoned=abandoned
        ):
            record_failure(server_id=server_id, abandoned=abandoned)
            slot_return(prompt_id=prompt_id, now=now)
    progress_drop(prompt_id)
    return True


def job_fault(*, job: Job, now: datetime | None = None, text: str = "") -> None:
    """A server gave up on its job (a faulted submit): put the slot back in the queue. With
    `text` (what it generated before it stopped) the next server continues from it."""
    now = now or timezone.now()
    if not job_give_back(
        job_id=job.id,
        prompt_id=job.prompt_id,
        server_id=job.server_id,
        state=Job.State.FAULTED,
        now=now,
        submitted=text,
        by_its_server=True,
    ):
        if Job.objects.filter(id=job.id, state=Job.State.DONE).exists():
            raise BadRequest(f"Job {job.id} was already submitted.", rc="DuplicateGen")
        raise NotFound(f"Job {job.id} is no longer processing.", rc="AbortedGen")
    logger.info("job %s faulted by server %s", job.id, job.server_id)


def _text_so_far(job_id: object, prompt_id: object, submitted: str) -> TextSoFar | None:
    if submitted:
        return TextSoFar(submitted, whole=False)
    progress = progress_text(prompt_id)
    if progress is not None and progress[0] == str(job_id) and progress[1]:
        return TextSoFar(progress[1], whole=True)
    return None


_KEEP_FIELDS = (
    "text", "carried_tokens", "model", "server_id", "server__owner_id", "prompt_id",
    "prompt__user_id", "prompt__n", "prompt__max_length", "prompt__state", "prompt__origin",
    "prompt__any_model", "prompt__params",
)  # fmt: skip


def _kept_at_stop(text: str, params: dict) -> tuple[str, bool]:
    """`text` up to and including its first complete stop sequence (the prompt's
    `stop_sequence`, as KoboldAI keeps it), and whether one was found."""
    return cut_at_stop(text, (params or {}).get("stop_sequence") or (), keep=True)


def continuation_cut_at_stops(job_id: object) -> None:
    """A continuation's backend saw only its own part: a stop sequence that spans the
    hand-over (or lies in the carried text) ends the joined text there."""
    row = Job.objects.filter(id=job_id).values_list("text", "prompt__params").first()
    if row is None:
        return
    text, stopped = _kept_at_stop(*row)
    if stopped and text != row[0]:
        Job.objects.filter(id=job_id).update(text=text)


def _keep(
    job_id: object, so_far: TextSoFar, now: datetime, *, by_its_server: bool, abandoned: bool
) -> bool:
    """Keep and pay the job's text so far, and give its slot back as a continuation (or end
    the generation with it); False when the prompt cannot be continued (more than one
    generation, no longer live, a deleted server, nothing new)."""
    row = Job.objects.filter(id=job_id).values_list(*_KEEP_FIELDS).first()
    if row is None:
        return False
    prefix, carried, model, server_id, owner_id, prompt_id, requester_id = row[:7]
    n, max_length, prompt_state, origin, any_model, params = row[7:]
    own = so_far.text
    if so_far.whole:
        own = own[len(prefix) :] if own.startswith(prefix) else ""
    if not own or n != 1 or prompt_state != Prompt.State.LIVE or server_id is None:
        return False
    whole, stopped = _kept_at_stop(prefix + own, params)
    own = whole[len(prefix) :]
    tokens = count_tokens(own, max(max_length - carried, 1))
    finished = stopped or carried + tokens >= max_length
    Job.objects.filter(id=job_id).update(
        text=whole, tokens=tokens, **({"state": Job.State.DONE} if finished else {})
    )
    earns = requester_id != owner_id
    if by_its_server:
        earns = earns and not (origin and origin == current_client())
    _pay_kept(job_id, server_id, model, requester_id, owner_id, tokens, earns, now)
    server = Server.objects.filter(pk=server_id)
    if finished:
        server.update(
            tokens_generated=F("tokens_generated") + tokens,
            requests_fulfilled=F("requests_fulfilled") + 1,
        )
    else:
        server.update(tokens_generated=F("tokens_generated") + tokens)
        # Handed over unfinished: a give-back in its record all the same (servers/records.py).
        record_failure(server_id=server_id, abandoned=abandoned)
        Prompt.objects.filter(id=prompt_id).update(
            waiting=F("waiting") + 1, continues=job_id, last_activity=now
        )
        if any_model:
            _prefer_model(prompt_id, model, server_id)
        events.queue_changed()
    events.prompt_changed(prompt_id)
    logger.info(
        "job %s handed over after %s tokens (%s carried): %s",
        job_id,
        tokens,
        carried,
        "the generation is complete" if finished else "the next server continues it",
    )
    return True


def _pay_kept(
    job_id: object,
    server_id: object,
    model: str,
    requester_id: int,
    owner_id: int,
    tokens: int,
    earns: bool,
    now: datetime,
) -> None:
    """The usage and contribution pair for the kept text, as a submit writes it: the
    unique (job_id, kind) makes a second payment of the same job fail."""
    kudos = tokens if earns else 0
    common = {"created": now, "tokens": tokens, "server_id": server_id, "job_id": job_id}
    LedgerEntry.objects.bulk_create(
        [
            LedgerEntry(
                user_id=requester_id,
                kind=LedgerEntry.Kind.USAGE,
                kudos=-kudos,
                model=model,
                **common,
            ),
            LedgerEntry(
                user_id=owner_id,
                kind=LedgerEntry.Kind.CONTRIBUTION,
                kudos=kudos,
                model=model,
                **common,
            ),
        ]
    )


def _prefer_model(prompt_id: object, model: str, server_id: object) -> None:
    """Narrow a prompt that took any model to `model` when another active server serves it
    (to anyone): the continuation then reads as one voice. Else any server may continue."""
    from generations.status import active_servers

    if not model:
        return
    others = [
        server
        for server in active_servers()
        if server.profile.id != server_id
        and not server.owner_only
        and model in server.profile.models
    ]
    if others:
        Prompt.objects.filter(id=prompt_id).update(any_model=False, models=[model])
        PromptModel.objects.create(prompt_id=prompt_id, name=model)
