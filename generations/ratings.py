"""Ratings of text: a requester says a generation was good or bad, and its server's record
counts it (servers/records.py), which the suspicion rules read (servers/suspicion.py).

Only the requester may rate: the account that sent the request, and for callers without
credentials (the anonymous key, unclaimed names) also the same client address block, as for
a KoboldCpp genkey (`prompt_client`). A generation is rated once, while its request lives.
The optional reason stays with the job, is shown to nobody but administrators (the admin's
job page) and is deleted with the prompt, like the text: it may quote it.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from django.db import transaction
from django.utils import timezone

from accounts.models import User
from generations.limits import prompt_client
from generations.models import Job, Prompt
from koboldcluster.errors import BadRequest, Forbidden, NotFound
from servers.records import record_rating
from servers.suspicion import servers_review

logger = logging.getLogger(__name__)

GOOD, BAD = "good", "bad"
REASON_MAX = 500
# The ids the faces answer: the AI Horde's and the original API's UUIDs, OpenAI's
# "cmpl-<hex>" and "chatcmpl-<hex>" (generations/api/openai/shapes.py).
_OPENAI_ID = re.compile(r"^(?:chat)?cmpl-([0-9a-f]{32})$")


def request_id(value: str) -> uuid.UUID:
    """The prompt a face's request id names (404 `RequestNotFound` when it names none)."""
    match = _OPENAI_ID.match(value)
    try:
        return uuid.UUID(match.group(1) if match else value)
    except ValueError:
        raise NotFound(
            f"Request {value} is unknown or has expired.", rc="RequestNotFound"
        ) from None


def counted(user: User, prompt: Prompt) -> bool:
    """Whether a rating counts in the server's record: not from callers without credentials
    (anyone, from any number of addresses), nor of a request aimed at chosen servers (a way
    to aim bad ratings at one). The rating is kept with the job either way."""
    return user.has_credentials and prompt.workers != Prompt.Workers.ONLY


@dataclass(frozen=True)
class Rated:
    rating: str
    generations: list[int]  # the indexes rated, in the status' order of generations


def generation_rate(
    *,
    prompt_id: uuid.UUID,
    user: User,
    rating: str,
    reason: str = "",
    generation: int | None = None,
    now: datetime | None = None,
) -> Rated:
    """Rate generation `generation` of the request (every one not rated yet when None).

    404 `RequestNotFound` when the request is unknown or expired; 403 `NotYourRequest` for
    anyone but its requester; 400 `NotRateable` when there is nothing (left) to rate.
    """
    now = now or timezone.now()
    if rating not in (GOOD, BAD):
        raise BadRequest('The rating must be "good" or "bad".', rc="ValidationError")
    prompt = _own_live_prompt(prompt_id, user, now)
    done = list(
        Job.objects.filter(prompt_id=prompt_id, state=Job.State.DONE)
        .order_by("started", "id")
        .values_list("id", "server_id", "rating")
    )
    if generation is not None and not 0 <= generation < len(done):
        raise BadRequest(
            f"Request {prompt_id} has {len(done)} generations: there is no generation "
            f"{generation}.",
            rc="NotRateable",
        )
    chosen = [(i, *done[i]) for i in ([generation] if generation is not None else range(len(done)))]
    chosen = [row for row in chosen if not row[3]]
    if not chosen:
        raise BadRequest(
            f"Nothing to rate in request {prompt_id}: no generation yet, or rated already.",
            rc="NotRateable",
        )
    rated = []
    counts = counted(user, prompt)
    with transaction.atomic():
        for index, job_id, server_id, _ in chosen:
            if Job.objects.filter(pk=job_id, rating="").update(
                rating=rating, rating_reason=reason[:REASON_MAX]
            ):
                rated.append(index)
                if server_id is not None and counts:
                    record_rating(server_id=server_id, good=rating == GOOD)
    servers = {row[2] for row in chosen if row[2] is not None and row[0] in rated}
    if rating == BAD and servers and counts:
        servers_review(server_ids=servers, now=now)
    logger.info("request %s: %s generations rated %s", prompt_id, len(rated), rating)
    return Rated(rating=rating, generations=rated)


def _own_live_prompt(prompt_id: uuid.UUID, user: User, now: datetime) -> Prompt:
    """The request to rate: 404 unless it is live, 403 unless it is the caller's."""
    prompt = (
        Prompt.objects.live(now).filter(pk=prompt_id).only("user_id", "client", "workers").first()
    )
    if prompt is None:
        raise NotFound(f"Request {prompt_id} is unknown or has expired.", rc="RequestNotFound")
    if prompt.user_id != user.pk or prompt.client != prompt_client(user):
        raise Forbidden(
            f"Only whoever sent request {prompt_id} may rate it (the same API key; without "
            "one, the same address).",
            rc="NotYourRequest",
        )
    return prompt
