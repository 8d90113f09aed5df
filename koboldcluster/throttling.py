"""Rate limits: fixed windows counted in the Django cache, per client address and per account.

A view opts in by naming its `throttle_scope` ("submit", "status", "worker", "register"); the
limits are `KOBOLDCLUSTER["RATE_LIMITS"]["<scope>_ip"]` and `["<scope>_account"]`. Each request
costs one atomic increment per limit (Redis INCR once REDIS_URL is set), so racing requests
cannot slip past a limit, and every process and machine shares the count. Without Redis each
web process counts on its own. `KOBOLDCLUSTER_RATE_LIMITS=off` turns every limit off.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.throttling import BaseThrottle


def rate_limit_hit(bucket: str, rate: tuple[int, int]) -> float | None:
    """Count a request in `bucket`; None if it is within `rate`, else seconds until it is."""
    allowed, seconds = rate
    now = time.time()
    window = int(now // seconds)
    key = f"ratelimit:{bucket}:{window}"
    try:
        used = cache.incr(key)
    except ValueError:  # the first request of this window
        # The counter outlives its window a little, so a request that read the clock just
        # before the window ended never recreates it without an expiry.
        used = 1 if cache.add(key, 1, seconds + 60) else cache.incr(key)
    if used <= allowed:
        return None
    return (window + 1) * seconds - now


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


class AddressRateThrottle(_WindowThrottle):
    """Per client address (the peer, or X-Forwarded-For behind KOBOLDCLUSTER_NUM_PROXIES)."""

    per = "ip"

    def ident(self, request: Any) -> str | None:
        return self.get_ident(request) or None


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
