"""A lost database connection is the cluster's trouble, not a bug: 503 with Retry-After.

When PostgreSQL restarts, fails over or has a connection killed, the requests in flight on
that connection fail with OperationalError or InterfaceError. They answer 503
`DatabaseUnavailable` with `Retry-After`, and clients (the bridge, horde clients) retry. Django
closes a connection that had an error at the end of the request (and CONN_HEALTH_CHECKS
tests a kept one before reuse), so the next request connects anew. SQLite's "database is
locked" after its busy timeout is the same kind of trouble and gets the same answer.
"""

from __future__ import annotations

import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from koboldcluster.errors import error_body
from koboldcluster.middleware import SyncAndAsyncMiddleware

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 2


def database_unavailable(request: HttpRequest, exc: Exception) -> JsonResponse:
    logger.warning(
        "database unavailable during %s %s: %s: %s",
        request.method,
        request.path,
        type(exc).__name__,
        str(exc).splitlines()[0] if str(exc) else "",
    )
    response = JsonResponse(
        error_body("The database is unavailable for a moment: try again.", "DatabaseUnavailable"),
        status=503,
    )
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


class DatabaseOutageMiddleware(SyncAndAsyncMiddleware):
    """Answer a request whose database connection failed with 503 (process_exception).

    Sync and async alike: Django calls process_exception the same way in both stacks.
    """

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)  # in an async stack: the coroutine, awaited above

    def process_exception(self, request: HttpRequest, exc: Exception) -> HttpResponse | None:
        if isinstance(exc, OperationalError | InterfaceError):
            return database_unavailable(request, exc)
        return None
