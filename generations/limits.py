"""What callers without credentials may queue, counted per client as well as per name.

The anonymous key is shared by everyone without an account, and an unclaimed username costs
nothing to invent: per-user limits alone let one client fill the anonymous pool (locking
every anonymous caller out) or queue 30 generations under each of a hundred made-up names.
So their prompts also remember their client (a keyed digest of the address block, see
`koboldcluster.clients`; no address is stored) and one client may have at most
CONCURRENCY_PER_CLIENT generations waiting across all of them, each request asking for at most
MAX_N_ANONYMOUS. The per-user limits (the anonymous pool, 30 per name) still apply too.
Accounts with credentials are limited per account only: they pay for what they queue.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db.models import Sum

from accounts.models import User
from generations.models import Prompt
from koboldcluster.clients import current_client
from koboldcluster.errors import BadRequest, TooManyRequests

# As for TooManyPrompts: a slot frees when a server takes one.
RETRY_AFTER = 10


def prompt_client(user: User) -> str:
    """What a new prompt of `user` stores as its client: the digest, or '' if not counted."""
    if user.has_credentials:
        return ""
    return current_client() or ""


def check_client_usage(user: User, n: int, now: datetime) -> None:
    """Refuse a prompt without credentials that asks for too much, for this user or client.

    Like the anonymous pool, the count is not serialised: submits of one client in flight at
    the same instant may overshoot it by what the per-address rate limit lets through.
    """
    if user.has_credentials:
        return
    limits = settings.KOBOLDCLUSTER
    if n > limits["MAX_N_ANONYMOUS"]:
        raise BadRequest(
            f"Without an account a request may ask for at most {limits['MAX_N_ANONYMOUS']} "
            f"generations ({n} asked for): register for more.",
            rc="TooManyGenerations",
        )
    client = prompt_client(user)
    if not client:
        return
    waiting = Prompt.objects.queued(now).filter(client=client).aggregate(total=Sum("waiting"))
    waiting = waiting["total"] or 0
    limit = limits["CONCURRENCY_PER_CLIENT"]
    if waiting + n > limit:
        raise TooManyRequests(
            f"Too many generations waiting from your address without an account: {waiting} "
            f"queued, {n} more asked for, and the limit is {limit}. Wait until servers have "
            "taken some, or register.",
            rc="TooManyPrompts",
            retry_after=RETRY_AFTER,
        )
