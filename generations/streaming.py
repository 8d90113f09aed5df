"""Following a front-end prompt while it generates: its text so far, then its generation.

`follow` yields the latest progress text of the prompt's job each time its server posts one
(generations/progress.py wakes the prompt's topic), and at the end the prompt's status with
the stored generation. A slow reader only ever sees the latest text: nothing is queued for
it. `Deltas` turns successive texts into the pieces a client has not seen, holding back what
a stop sequence or the final trim may still take away, so that the pieces always add up to
the stored generation as the non-streaming answer shows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.conf import settings

from accounts.models import User
from generations.frontend import RequestFaulted, cancel_gone, give_up, wait_seconds
from generations.intake import GenerationRequest, prompt_create
from generations.liveness import stall_seconds
from generations.progress_store import progress_text
from generations.status import PromptStatus, prompt_status
from generations.stops import cut_at_stop
from generations.waiting import STALL_MARGIN_SECONDS, reap_stalled, stall_check_in
from koboldcluster import metrics, shutdown, wakeups
from koboldcluster.errors import ApiError

logger = logging.getLogger(__name__)

# The status is read at least this often while progress flows (a lost wake-up, a reaped job).
RECHECK_SECONDS = 5.0


@dataclass(frozen=True)
class Update:
    """The text so far; `status` is set on the last update, once the prompt is done. A
    `keepalive` update brings nothing new: the stream sends a comment, so that proxies that
    cut idle connections keep it open while it waits (queued, or a slow server)."""

    text: str
    status: PromptStatus | None = None
    keepalive: bool = False


KEEPALIVE = Update("", keepalive=True)


class ServerReplaced(ApiError):
    """The text a stream already sent is not the beginning of the text now generated: its
    job went back to the queue (its server failed, vanished or stalled) and another server
    generates it from the start. That is rare: a job given back after it produced text is
    continued from that text (generations/handover.py), and its stream goes on. It is not
    when the text so far was lost (a request for several generations, or a progress post
    that raced the hand-over). The stream cannot take back what it sent, so it ends with
    this error rather than garble the answer."""

    status_code = 502
    default_rc = "ServerReplaced"

    def __init__(self) -> None:
        super().__init__(
            "The server generating this stream dropped out and its text could not be "
            "continued: another server started the generation again, and the text already "
            "sent is not part of its answer. Send the request again (the stream was "
            "cancelled)."
        )


async def start(*, user: User, request: GenerationRequest) -> object:
    """Queue a prompt to stream; its id. Errors (limits, validation) come before any byte."""
    prompt = await sync_to_async(prompt_create)(user=user, request=request)
    return prompt.id


def keepalive_seconds() -> float:
    return float(settings.KOBOLDCLUSTER["STREAM_KEEPALIVE_SECONDS"])


async def follow(prompt_id: object) -> AsyncIterator[Update]:
    """The prompt's text so far as it grows, then its final status.

    Counted in STREAMS_OPEN. A reader that goes away (the task cancelled or the iterator
    closed) cancels the prompt; so does waiting longer than KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS
    (then WaitedTooLong is raised, as RequestFaulted is when the servers failed it).
    """
    finished = False
    metrics.STREAMS_OPEN.inc()
    try:
        async for update in _updates(prompt_id, wait_seconds()):
            finished = update.status is not None
            yield update
    finally:
        metrics.STREAMS_OPEN.dec()
        if not finished:
            with contextlib.suppress(Exception):
                await asyncio.shield(sync_to_async(cancel_gone)(prompt_id))
            logger.info("prompt %s cancelled: its stream ended early", prompt_id)


async def _updates(prompt_id: object, timeout: float) -> AsyncIterator[Update]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    read_progress = sync_to_async(progress_text, thread_sensitive=False)
    last_text: str | None = None
    last_check = last_sent = loop.time()
    stall_at = math.inf  # when a job of the prompt could have stalled (a status check then)
    async with wakeups.listening(wakeups.topic_for_prompt(prompt_id)) as wake:
        while True:
            # The text so far first: it is what most wake-ups bring, and cheap to read.
            entry = await read_progress(prompt_id)
            text = entry[1] if entry else None
            if text is not None and text != last_text:
                last_text, last_sent = text, loop.time()
                yield Update(text)
                now = loop.time()
                check_status = now - last_check > RECHECK_SECONDS or now >= stall_at
                # A progress post is a sign of life of the job that sent it: if it is the
                # last, the job stalls STALL_SECONDS from now (then a status check).
                stall_at = now + stall_seconds() + STALL_MARGIN_SECONDS
            else:  # no new text: maybe the submit (which removes it) woke us
                check_status = True
            if check_status:
                status = await sync_to_async(prompt_status)(prompt_id=prompt_id)
                last_check = loop.time()
                if status.done:
                    yield _final(status)
                    return
                await reap_stalled(status)
                stall_at = loop.time() + await stall_check_in(status)
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise await sync_to_async(give_up)(prompt_id, timeout)
            if loop.time() - last_sent >= keepalive_seconds():
                last_sent = loop.time()
                yield KEEPALIVE
            quiet = last_sent + keepalive_seconds() - loop.time()
            stall = stall_at - loop.time()
            await wake.wait(max(min(RECHECK_SECONDS, remaining, quiet, stall), 0))
            if shutdown.is_stopping():
                raise shutdown.ServerStopping()


def _final(status: PromptStatus) -> Update:
    if status.faulted and not status.generations:
        raise RequestFaulted(
            "The servers failed this request repeatedly; it was given up. Try again, or "
            "with other settings."
        )
    text = status.generations[0].text if status.generations else ""
    return Update(text, status)


class Deltas:
    """What to send of each new text: only what the client has not seen yet.

    With `stops`, the text is cut at the first stop sequence (as OpenAI's answer is) and the
    last characters that could begin one are held back until the text goes on; with `strip`
    (a chat message) leading and trailing whitespace is held back likewise.

    The pieces sent are always the beginning of the final text, or the stream fails: a text
    that is only the beginning of what was sent (another server starting the job again)
    sends nothing while it may still catch up; one that differs from it, or a final text
    that does not continue it, raises ServerReplaced.
    """

    def __init__(self, *, stops: Sequence[str] = (), strip: bool = False) -> None:
        self.stops = [s for s in stops if s]
        self.strip = strip
        self.sent = ""

    def visible(self, text: str, *, final: bool) -> str:
        text, stopped = cut_at_stop(text, self.stops)
        if self.strip:
            text = text.strip() if final else text.lstrip().rstrip()
        if not final and not stopped and self.stops:
            hold = max(len(s) for s in self.stops) - 1
            text = text[: max(len(text) - hold, 0)]
        return text

    def delta(self, text: str, *, final: bool = False) -> str:
        shown = self.visible(text, final=final)
        if shown.startswith(self.sent):
            piece, self.sent = shown[len(self.sent) :], shown
            return piece
        if final or not self.sent.startswith(shown):
            logger.info("a stream's text does not continue what it sent: its server was replaced")
            raise ServerReplaced()
        return ""
