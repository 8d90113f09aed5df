"""Rate limits: fixed windows counted in the Django cache, per client address and per account.

A view opts in by naming its `throttle_scope` ("submit", "status", "worker", "register"); the
limits are `KOBOLDCLUSTER["RATE_LIMITS"]["<scope>_ip"]` and `["<scope>_account"]`. Each request
costs one atomic increment per limit (`koboldcluster.counters`: Redis INCR once REDIS_URL is
set, else an UPSERT in a counter file every process of the machine shares), so racing
requests cannot slip past a limit, whichever process serves them. Addresses are counted per
client block (an IPv6 /64) behind trusted proxies only (`koboldcluster.clients`).
`KOBOLDCLUSTER_RATE_LIMITS=off` turns every limit off.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import wraps
from types import SimpleNamespace
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework.throttling import BaseThrottle

from koboldcluster import counters
from koboldcluster.clients import current_client, request_client
from koboldcluster.errors import TooManyRequests, error_body

PlainView = Callable[..., HttpResponse]


def rate_limit_hit(bucket: str, rate: tuple[int, int]) -> float | None:
    """Count a request in `bucket`; None if it is within `rate`, else seconds until it is."""
    allowed, seconds = rate
    now = time.time()
    window = int(now // seconds)
    # The counter outlives its window a little, so a request that read the clock just before
    # the window ended never recreates it without an expiry.
    used = counters.hit(f"ratelimit:{bucket}:{window}", seconds + 60)
    if used <= allowed:
        return None
    return (window + 1) * seconds - now


def client_rate_check(scope: str, what: str) -> None:
    """Count the current request's client against the `<scope>_ip` limit; 429 beyond it.

    For limits that only a service can tell apply (e.g. a pop that creates an account).
    Outside a request (no client) nothing is counted.
    """
    limits = settings.KOBOLDCLUSTER
    rate = limits["RATE_LIMITS"].get(f"{scope}_ip")
    client = current_client()
    if not limits["RATE_LIMITS_ENABLED"] or rate is None or client is None:
        return
    wait = rate_limit_hit(f"{scope}:ip:{client}", rate)
    if wait is not None:
        raise TooManyRequests(
            f"Too many {what} from your address: try again in {math.ceil(wait)} seconds.",
            rc="TooManyRequests",
            retry_after=max(1, math.ceil(wait)),
        )


class _WindowThrottle(BaseThrottle):
    per = ""

    def __init__(self) -> None:
        self.seconds_to_wait: float | None = None

    def ident(self, request: Any) -> str | None:
        raise NotImplementedError

    def allow_request(self, request: Any, view: Any) -> bool:
        scope = getattr(view, "throttle_scope", None)
        limits = settings.KOBOLDCLUSTER
        if not scope or not limits["RATE_LIMITS_ENABLED"]:
            return True
        rate = limits["RATE_LIMITS"].get(f"{scope}_{self.per}")
        ident = self.ident(request) if rate else None
        if ident is None:
            return True
        self.seconds_to_wait = rate_limit_hit(f"{scope}:{self.per}:{ident}", rate)
        return self.seconds_to_wait is None

    def wait(self) -> float | None:
        return self.seconds_to_wait


def throttled(scope: str) -> Callable[[PlainView], PlainView]:
    """A plain Django view (a page, /metrics) counted against the `<scope>_ip` limit, as an API
    view with that `throttle_scope` is: beyond it, 429 TooManyRequests with Retry-After."""

    def decorate(view: PlainView) -> PlainView:
        @wraps(view)
        def limited(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            throttle = AddressRateThrottle()
            if throttle.allow_request(request, SimpleNamespace(throttle_scope=scope)):
                return view(request, *args, **kwargs)
            wait = max(1, math.ceil(throttle.wait() or 1))
            message = f"Too many requests from your address: try again in {wait} seconds."
            response = JsonResponse(error_body(message, "TooManyRequests"), status=429)
            response["Retry-After"] = str(wait)
            return response

        return limited

    return decorate


class AddressRateThrottle(_WindowThrottle):
    """Per client address block (the peer, or X-Forwarded-For behind trusted proxies)."""

    per = "ip"

    def ident(self, request: Any) -> str | None:
        return request_client(request)


class AccountRateThrottle(_WindowThrottle):
    """Per account identified by an API key: all of a user's keys share one count.

    The anonymous key is shared by every caller without an account, so it is limited per
    address only.
    """

    per = "account"

    def ident(self, request: Any) -> str | None:
        # Any account an API key identified (koboldcluster does not import the accounts app).
        user = getattr(request, "user", None)
        if user is not None and user.pk is not None and not user.is_anonymous_user:
            return str(user.pk)
        return None
