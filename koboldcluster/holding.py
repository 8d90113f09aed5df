"""Held responses: a view that found nothing yet may be held until news arrives (long-poll pops).

The views of HELD_PATHS are ordinary synchronous views: they answer at once, as if nobody
waited. When the client asked to wait and there is nothing yet, the view attaches `hold` to
its response, an async callable taking a wake-up listener (`koboldcluster.wakeups`): awaiting
it holds the request without a thread or a database connection and updates the response in
place. Whoever serves the request awaits it after the view has run, with a listener to
`"queue"` entered before the view ran, so that no wake-up between the view's reading and the
wait is missed:

- the cluster's ASGI handler (`koboldcluster/asgi.py`), which `./run.sh` serves: the view runs
  in the request's one step on the sync thread, like any other request, and the wait follows
  on the event loop, watching for the client to leave;
- HeldResponseMiddleware under Django's own handlers (runserver's WSGI, the test clients).
"""

from __future__ import annotations

from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from koboldcluster import routes, wakeups
from koboldcluster.middleware import SyncAndAsyncMiddleware

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


class HeldResponseMiddleware(SyncAndAsyncMiddleware):
    """Holds the responses of HELD_PATHS under Django's handlers (the cluster's ASGI handler
    holds them itself, and leaves this middleware out of its synchronous chain). Under WSGI
    the wait runs in an event loop of its own, in the request's thread, as Django runs an
    async view there."""

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        if request.path_info not in HELD_PATHS:
            return self.get_response(request)
        return async_to_sync(self._held)(request)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        if request.path_info not in HELD_PATHS:
            return await self.get_response(request)
        return await self._held(request)

    async def _held(self, request: HttpRequest) -> HttpResponseBase:
        async with wakeups.listening(wakeups.QUEUE) as listener:
            if self.is_async:
                response = await self.get_response(request)
            else:
                response = await sync_to_async(self.get_response)(request)
            await finish(response, listener)
        return response
