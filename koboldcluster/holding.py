"""Held responses: a view that found nothing yet may be held until news arrives (long-poll pops).

The views of HELD_PATHS are ordinary synchronous views: they answer at once, as if nobody
waited. When the client asked to wait and there is nothing yet, the view attaches a `Hold` to
its response (`attach`), whose `until_news` takes a wake-up listener (`koboldcluster.wakeups`):
awaiting it holds the request without a thread or a database connection and updates the response in
place. The cluster's ASGI handler (`koboldcluster/asgi.py`, the one entry: the web server,
`manage.py runserver` and the tests' clients all call it) awaits it after the view has run,
with a listener to `"queue"` entered before the view ran, so that no wake-up between the
view's reading and the wait is missed: the view runs in the request's one step on the sync
thread, like any other request, and the wait follows on the event loop, watching for the
client to leave.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from django.http.response import HttpResponseBase

from koboldcluster import routes, wakeups

# The paths (`//` merged) whose views may ask to be held: the two pops (koboldcluster.routes).
HELD_PATHS = routes.held_paths()


@dataclass(frozen=True)
class Hold:
    """A view's request to hold its response: `until_news(listener)` waits for wake-ups and
    tries again, updating the response in place (a long-poll pop: generations.long_poll)."""

    until_news: Callable[[wakeups.Listener], Awaitable[None]]


def attach(response: HttpResponseBase, hold: Hold) -> None:
    """Ask the entry to hold `response` after its view (`finish`)."""
    response.hold = hold  # type: ignore[attr-defined]


def hold_of(response: HttpResponseBase) -> Hold | None:
    """The hold a view attached to this response, if any (and nobody has held it yet)."""
    hold = getattr(response, "hold", None)
    return hold if isinstance(hold, Hold) else None


def is_held(response: HttpResponseBase) -> bool:
    """Whether the view asked to hold this response (and nobody has held it yet)."""
    return hold_of(response) is not None


async def finish(response: HttpResponseBase, listener: wakeups.Listener) -> None:
    """Hold the response if its view asked to; once held, it is final."""
    hold = hold_of(response)
    if hold is not None:
        response.hold = None  # type: ignore[attr-defined]
        await hold.until_news(listener)
