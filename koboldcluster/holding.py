"""Held responses: a view that found nothing yet may be held until news arrives (long-poll pops).

The views of HELD_PATHS are ordinary synchronous views: they answer at once, as if nobody
waited. When the client asked to wait and there is nothing yet, the view attaches `hold` to
its response, an async callable taking a wake-up listener (`koboldcluster.wakeups`): awaiting
it holds the request without a thread or a database connection and updates the response in
place. The cluster's ASGI handler (`koboldcluster/asgi.py`, the one entry: granian,
`manage.py runserver` and the tests' clients all call it) awaits it after the view has run,
with a listener to `"queue"` entered before the view ran, so that no wake-up between the
view's reading and the wait is missed: the view runs in the request's one step on the sync
thread, like any other request, and the wait follows on the event loop, watching for the
client to leave.
"""

from __future__ import annotations

from django.http.response import HttpResponseBase

from koboldcluster import routes, wakeups

# The paths (`//` merged) whose views may ask to be held: the two pops (koboldcluster.routes).
HELD_PATHS = routes.held_paths()


def is_held(response: HttpResponseBase) -> bool:
    """Whether the view asked to hold this response (and nobody has held it yet)."""
    return getattr(response, "hold", None) is not None


async def finish(response: HttpResponseBase, listener: wakeups.Listener) -> None:
    """Hold the response if its view asked to; once held, it is final."""
    hold = getattr(response, "hold", None)
    if hold is not None:
        response.hold = None  # type: ignore[attr-defined]
        await hold(listener)
