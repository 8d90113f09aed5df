"""Long-poll pops: a pop with `wait` that finds nothing is held until work arrives.

The DRF pop views stay synchronous: they parse, authenticate, rate-limit, check the server in
and try once, exactly as without `wait`. When that finds nothing and the server asked to
wait, the view attaches a retry (one synchronous callable: pop and shape the answer) to its
response. `long_poll(View)` is the async view in front of it: it listens for `"queue"`
wake-ups from before the first try (so none is missed), and between tries holds no thread and
no database connection. It answers with the first try that gets a job, or with the last one
when the time is up, in the same shape as an immediate pop. (No try at the end: without a
wake-up, and without a change seen by the periodic re-check, the last answer still holds; a
server asks again at once anyway.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections
from django.db.models import Count, Max, Sum
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from rest_framework.response import Response
from rest_framework.views import APIView

from generations.models import Prompt
from generations.queue import PopResult
from koboldcluster import wakeups
from koboldcluster.fields import StrictFloatField

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


@dataclass(frozen=True)
class Retry:
    seconds: float
    attempt: Callable[[], PopAttempt]


def respond(first: PopAttempt, *, wait: float, attempt: Callable[[], PopAttempt]) -> Response:
    """The pop's answer; with `wait` and no job, marked for `long_poll` to try again."""
    response = Response(first.body)
    seconds = min(wait, settings.KOBOLDCLUSTER["POP_WAIT_MAX_SECONDS"])
    if not first.taken and seconds > 0:
        response.long_poll = Retry(seconds=seconds, attempt=attempt)  # type: ignore[attr-defined]
    response.pop_attempt = first  # type: ignore[attr-defined]
    return response


def long_poll(view_class: type[APIView]) -> Callable[..., Any]:
    """The async view serving `view_class`, holding its pops that asked to `wait`."""
    drf_view = view_class.as_view()

    async def view(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        async with wakeups.listening(wakeups.QUEUE) as wake:
            response = await sync_to_async(drf_view)(request, *args, **kwargs)
            retry: Retry | None = getattr(response, "long_poll", None)
            if retry is None:
                return response
            await sync_to_async(_release_connections)()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + retry.seconds
            attempt: PopAttempt = response.pop_attempt
            while not attempt.taken and loop.time() < deadline:
                if not wake.pending:  # a wake-up during the try may mean it missed the news
                    wake.done(pass_on=attempt.others_may_serve)
                if not await wake.wait(deadline - loop.time()):
                    break  # time is up and nothing changed since the last try: its answer holds
                attempt = await sync_to_async(_try_and_release)(retry.attempt)
            response.data = attempt.body
            return response

    # What drf-spectacular and Django read from a DRF view.
    view.cls = view_class  # type: ignore[attr-defined]
    view.initkwargs = getattr(drf_view, "initkwargs", {})  # type: ignore[attr-defined]
    return csrf_exempt(view)


def _release_connections() -> None:
    """Give the database connections back while waiting (not inside a test's transaction)."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


def _try_and_release(attempt: Callable[[], PopAttempt]) -> PopAttempt:
    try:
        return attempt()
    finally:
        _release_connections()


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
