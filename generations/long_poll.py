"""Long-poll pops: a pop with `wait` that finds nothing is held until work arrives.

The pop views are ordinary synchronous views: they parse, authenticate, rate-limit, check the
server in and try once, exactly as without `wait`. When that finds nothing and the server
asked to wait, `respond` attaches a `Hold` to the response (`koboldcluster.holding`): between
tries it holds no thread and no database connection, and each try after a `"queue"` wake-up
is the claim alone (one synchronous callable: pop and shape the answer). The answer is the
first try that gets a job, or the last one when the time is up, in the same shape as an
immediate pop. (No try at the end: without a wake-up, and without a change seen by the
periodic re-check, the last answer still holds; a server asks again at once anyway.)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.models import Count, Max, Sum
from django.utils import timezone
from rest_framework.response import Response

from generations.models import Prompt
from generations.queue import PopResult
from koboldcluster import holding, metrics, shutdown, wakeups
from koboldcluster.errors import error_body
from koboldcluster.fields import StrictFloatField
from koboldcluster.outage import RETRY_AFTER_SECONDS
from koboldcluster.outage import logger as outage_logger

WAIT_MAX = 30


class WaitField(StrictFloatField):
    """`wait`: seconds (0–30) a pop that finds nothing may be held for work to arrive."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(
            min_value=0,
            max_value=WAIT_MAX,
            default=0,
            help_text="Seconds (0–30) to hold the pop when there is no work yet; 0 answers "
            "at once. Answers as soon as a job arrives.",
            **kwargs,
        )


@dataclass(frozen=True)
class PopAttempt:
    body: dict[str, Any]
    taken: bool  # a job was handed out
    # Another waiting server may find work: a job was taken (more slots may wait), or the
    # queue holds prompts this server may not serve. False only for an empty queue.
    others_may_serve: bool

    @classmethod
    def of(cls, result: PopResult, body: dict[str, Any]) -> PopAttempt:
        skipped = result.skipped
        return cls(
            body=body,
            taken=bool(result.jobs),
            others_may_serve=bool(result.jobs) or not skipped or any(skipped.values()),
        )


def does_not_wait(body: dict[str, Any]) -> bool:
    """Whether a pop's raw body leaves out `wait` (or sets it 0): such a pop is never held,
    so the direct lane may answer it (koboldcluster.direct)."""
    return not body.get("wait")


class PopReply:
    """Both APIs' pop views: a pop that does not wait answers their `answer` to `pop_once`
    (the direct lane's reply, koboldcluster.direct)."""

    @classmethod
    def reply(cls, data: dict[str, Any], request: Any) -> dict[str, Any]:
        return cls.answer(cls.pop_once(data, request)).body  # type: ignore[attr-defined]


# Pops held now in this process, per account (the event loop's and the sync thread's: the
# GIL keeps a dict's item updates whole).
_held_pops: Counter[int] = Counter()


def respond(
    first: PopAttempt, *, wait: float, attempt: Callable[[], PopAttempt], account: int = 0
) -> Response:
    """The pop's answer; with `wait` and no job, held for more tries (`HeldPop`)."""
    response = Response(first.body)
    seconds = min(wait, settings.KOBOLDCLUSTER["POP_WAIT_MAX_SECONDS"])
    if not first.taken and seconds > 0:
        held = HeldPop(response, first, seconds=seconds, attempt=attempt, account=account)
        holding.attach(response, holding.Hold(until_news=held.until_news))
    return response


@dataclass(frozen=True)
class HeldPop:
    """A pop that found nothing and asked to wait: its response (already through the
    middleware), the first try's answer, how long it may wait, the claim to try again, and
    whose pop it is (HELD_POPS_PER_ACCOUNT)."""

    response: Response
    first: PopAttempt
    seconds: float
    attempt: Callable[[], PopAttempt]
    account: int = 0

    async def until_news(self, wake: wakeups.Listener) -> None:
        """Try again at each wake-up until a job is taken or the time is up; answer the last
        try.

        An account with HELD_POPS_PER_ACCOUNT pops held here already gets the first answer at
        once: every wake-up tries each held pop again, so none may hold them without end."""
        if _held_pops[self.account] >= settings.KOBOLDCLUSTER["HELD_POPS_PER_ACCOUNT"]:
            return
        metrics.LONG_POLL_WAITERS.inc()
        _held_pops[self.account] += 1
        try:
            attempt = await self._tries(wake)
        except (OperationalError, InterfaceError) as lost:
            # The held tries run after the middleware: answered here as
            # DatabaseOutageMiddleware answers any other request whose connection failed.
            outage_logger.warning("database unavailable during a held pop: %s", type(lost).__name__)
            self.response.status_code = 503
            self.response["Retry-After"] = str(RETRY_AFTER_SECONDS)
            message = "The database is unavailable for a moment: try again."
            _render_again(self.response, error_body(message, "DatabaseUnavailable"))
            return
        finally:
            metrics.LONG_POLL_WAITERS.dec()
            _held_pops[self.account] -= 1
            if _held_pops[self.account] <= 0:
                del _held_pops[self.account]
        if attempt is not self.first:
            _render_again(self.response, attempt.body)

    async def _tries(self, wake: wakeups.Listener) -> PopAttempt:
        """The tries, one per wake-up, until one takes a job or the time is up: the last."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.seconds
        attempt = self.first
        while not attempt.taken and loop.time() < deadline:
            if not wake.pending:  # a wake-up during the try may mean it missed the news
                wake.done(pass_on=attempt.others_may_serve)
            if not await wake.wait(deadline - loop.time()) or shutdown.is_stopping():
                break  # time is up and nothing changed since the last try: its answer holds
            attempt = await sync_to_async(_try_and_release)(self.attempt)
        return attempt


def _render_again(response: Response, body: dict[str, Any]) -> None:
    """The response, already rendered and through the middleware, now with `body`."""
    response.data = body
    response.content = response.rendered_content
    if response.has_header("Content-Length"):
        response["Content-Length"] = str(len(response.content))


def _try_and_release(attempt: Callable[[], PopAttempt]) -> PopAttempt:
    """One try, outside any request: the connection is given back as at a request's end."""
    try:
        return attempt()
    finally:
        wakeups.release_connections()


def queue_fingerprint() -> tuple[Any, ...]:
    """A cheap reading of the queue that changes when a prompt arrives or a slot comes back."""
    found = Prompt.objects.queued(timezone.now()).aggregate(
        count=Count("id"),
        slots=Sum("waiting"),
        newest=Max("created"),
        failures=Sum("faulted_jobs"),
    )
    return tuple(found.values())


wakeups.set_recheck(wakeups.QUEUE, queue_fingerprint)
