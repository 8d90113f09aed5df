"""Front-end requests (the KoboldAI and OpenAI APIs): a prompt that waits for its answer.

Such a request is an ordinary prompt of the queue (same priority, ledger and expiry): it is
created by `prompt_create`, served through either pop protocol, and waited for inside the
HTTP request up to KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS. Giving up, and a caller that
disconnects, cancel the prompt, so nothing is left in the queue for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils import timezone

from accounts.models import User
from generations.chat import family
from generations.intake import GenerationRequest, prompt_create
from generations.limits import prompt_client
from generations.models import Prompt
from generations.progress_store import progress_text
from generations.status import PromptStatus, able_servers, prompt_cancel, prompt_status
from generations.waiting import prompt_wait_done
from koboldcluster.errors import ApiError, NotFound
from koboldcluster.shutdown import ServerStopping
from servers.models import Server

logger = logging.getLogger(__name__)

ANY_MODEL = ("", "*")


# The front-end faces' honest waits (issue 25): where the request stands in the queue and
# how long it should still take at the servers' measured speeds (v2's queue_position and
# wait_time), and which servers produced its text.
QUEUE_POSITION_HEADER = "X-KoboldCluster-Queue-Position"
WAIT_SECONDS_HEADER = "X-KoboldCluster-Wait-Seconds"
SERVERS_HEADER = "X-KoboldCluster-Servers"


def wait_headers(status: PromptStatus) -> dict[str, str]:
    """The queue position and wait estimate of a status read with its outlook."""
    outlook = status.outlook
    if outlook is None:
        return {}
    return {
        QUEUE_POSITION_HEADER: str(outlook.queue_position),
        WAIT_SECONDS_HEADER: str(outlook.wait_time),
    }


def servers_header(status: PromptStatus) -> dict[str, str]:
    """The servers that produced the first generation, first to last, by name (each
    percent-encoded: a name may hold any character), comma-separated."""
    if not status.generations:
        return {}
    names = [quote(part["name"], safe=" ") for part in status.servers_of(status.generations[0])]
    return {SERVERS_HEADER: ", ".join(names)}


def outlook_headers(prompt_id: object) -> dict[str, str]:
    """`wait_headers` of the prompt now (a status read with its outlook); {} once gone."""
    try:
        return wait_headers(prompt_status(prompt_id=prompt_id, outlook=True))
    except NotFound:
        return {}


class WaitedTooLong(ApiError):
    status_code = 504
    default_rc = "Timeout"


class RequestFaulted(ApiError):
    status_code = 502
    default_rc = "RequestFaulted"


def wait_seconds() -> float:
    return float(settings.KOBOLDCLUSTER["FRONTEND_WAIT_SECONDS"])


@dataclass
class ServedModel:
    """A model some active server serves now, with the most any of them allows."""

    name: str
    servers: int
    max_length: int
    max_context_length: int
    since: datetime


def served_models(*, now: datetime | None = None) -> list[ServedModel]:
    """The models of the active servers that take anyone's requests, by name."""
    found: dict[str, ServedModel] = {}
    rows = (
        Server.objects.active(now or timezone.now())
        .filter(maintenance=False, paused=False)
        .values_list("models", "max_length", "max_context_length", "created")
    )
    for names, max_length, max_context_length, created in rows:
        for name in names:
            model = found.setdefault(name, ServedModel(name, 0, 0, 0, created))
            model.servers += 1
            model.max_length = max(model.max_length, max_length)
            model.max_context_length = max(model.max_context_length, max_context_length)
            model.since = min(model.since, created)
    return sorted(found.values(), key=lambda model: model.name)


def models_for(requested: str, served: list[ServedModel]) -> list[str]:
    """The acceptable models of a request naming `requested`: [] (any) for "" or "*", the
    name itself when a server serves exactly it, else every served model of its family,
    else the name as given (a server of it may still come)."""
    requested = requested.strip()
    if requested in ANY_MODEL:
        return []
    names = [model.name for model in served]
    if requested in names:
        return [requested]
    wanted = family(requested)
    return [name for name in names if family(name) == wanted] or [requested]


async def generate(*, user: User, request: GenerationRequest) -> PromptStatus:
    """Queue `request` and wait for it to be done; the status with its generations.

    Waiting longer than the configured time cancels the prompt and raises a clear error; a
    caller that goes away (the view task cancelled) cancels it too.
    """
    prompt = await sync_to_async(prompt_create)(user=user, request=request)
    timeout = wait_seconds()
    try:
        status = await prompt_wait_done(prompt.id, timeout)
    except asyncio.CancelledError:
        await sync_to_async(cancel_gone)(prompt.id)
        logger.info("prompt %s cancelled: the caller went away", prompt.id)
        raise
    except ServerStopping:
        await sync_to_async(cancel_gone)(prompt.id)
        logger.info("prompt %s cancelled: this web server is stopping", prompt.id)
        raise
    if status is None:
        raise await sync_to_async(give_up)(prompt.id, timeout)
    if status.faulted and not status.generations:
        raise RequestFaulted(
            "The servers failed this request repeatedly; it was given up. Try again, or "
            "with other settings."
        )
    return status


def cancel_gone(prompt_id: object) -> None:
    """Cancel the prompt of a client that left (its slots go to nobody)."""
    with contextlib.suppress(NotFound):  # expired meanwhile: nothing left to cancel
        prompt_cancel(prompt_id=prompt_id)


def give_up(prompt_id: object, timeout: float) -> WaitedTooLong:
    """Cancel a prompt that waited too long; the error that says why it was not served:
    no server able to serve it any more, or the queue, with the prompt's place in it and
    the wait the measured server speeds predicted."""
    before = prompt_status(prompt_id=prompt_id, outlook=True)
    status = prompt_cancel(prompt_id=prompt_id)
    error = _waited_too_long(before, status, timeout)
    error.headers.update(wait_headers(before))
    return error


def _waited_too_long(before: PromptStatus, status: PromptStatus, timeout: float) -> WaitedTooLong:
    if not able_servers(prompt=status.prompt):
        models = ", ".join(status.prompt.models) or "any model"
        return WaitedTooLong(
            f"No active server could serve this request ({models}, max_length "
            f"{status.prompt.max_length}, max_context_length "
            f"{status.prompt.max_context_length}) within {timeout:g} s; it was cancelled. "
            "See /v1/models or /api/v2/status/models for what is served now.",
            rc="NoServerAvailable",
        )
    outlook = before.outlook
    place = ""
    if outlook is not None and outlook.queue_position:
        place = (
            f" It was number {outlook.queue_position} in the queue, with about "
            f"{outlook.wait_time} s still to wait at the servers' measured speeds."
        )
    return WaitedTooLong(
        f"The request was not served within {timeout:g} s (the queue is long); it was "
        f"cancelled.{place} Try again later, or ask for fewer tokens.",
    )


def genkey_prompt(user: User, genkey: str) -> object | None:
    """The caller's latest live prompt sent with `genkey`: the same account, and without
    credentials also the same client address (generations/limits.py's `prompt_client`), so
    that anonymous callers never reach each other's generations by guessing a key."""
    return (
        Prompt.objects.live()
        .filter(user=user, genkey=genkey, client=prompt_client(user))
        .order_by("-created")
        .values_list("id", flat=True)
        .first()
    )


def genkey_abort(*, user: User, genkey: str) -> bool:
    """Cancel the caller's generation that was sent with `genkey`; whether there was one.
    Jobs in flight still finish and are paid, as for any cancel."""
    prompt_id = genkey_prompt(user, genkey)
    if prompt_id is None:
        return False
    try:
        prompt_cancel(prompt_id=prompt_id)
    except NotFound:
        return False
    return True


def genkey_check(*, user: User, genkey: str) -> tuple[str, dict[str, str]]:
    """The text so far of the caller's generation sent with `genkey` (KoboldCpp's check):
    its server's latest progress, the stored generation once done, else ""; and the honest
    wait's headers (queue position, wait estimate, and the servers once done)."""
    prompt_id = genkey_prompt(user, genkey)
    if prompt_id is None:
        return "", {}
    progress = progress_text(prompt_id)
    try:
        status = prompt_status(prompt_id=prompt_id, outlook=True)
    except NotFound:
        return "", {}
    headers = {**wait_headers(status), **servers_header(status)}
    if progress is not None:
        return progress[1], headers
    return (status.generations[0].text if status.generations else ""), headers
