"""ASGI entry point, what `./run.sh` serves (granian, `koboldcluster.asgi:application`).

Ordinary views stay synchronous Django: Django's ASGI handler gives each request a thread of
its own for them, kept until the request ends. The waiting requests (long-poll pops) must not
keep one while they wait, so they do without that per-request thread: their short
synchronous parts (one try at a time) take turns on the process's shared sync thread.
"""

from __future__ import annotations

import os
import re
from typing import Any

from django.core.asgi import get_asgi_application
from django.core.handlers.asgi import ASGIHandler

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "koboldcluster.settings")
# Tells settings.py to give each web process a database connection pool (PostgreSQL).
os.environ["KOBOLDCLUSTER_SERVING"] = "asgi"

# The waiting endpoints (`//` as the ApiMiddleware reads it, a single `/`).
WAITING_PATHS = frozenset(
    {
        "/generate/pop",
        "/api/v2/generate/text/pop",
        # The front-end APIs wait for their generation (generations/waiting.py).
        "/api/v1/generate",
        "/api/latest/generate",
        "/v1/completions",
        "/v1/chat/completions",
        # Streams to clients (generations/sse.py).
        "/api/extra/generate/stream",
    }
)
_SLASHES = re.compile(r"//+")


class ClusterASGIHandler(ASGIHandler):
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and _SLASHES.sub("/", path) in WAITING_PATHS:
            await self.handle(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


get_asgi_application()  # django.setup(), as Django's own entry point does
application = ClusterASGIHandler()
