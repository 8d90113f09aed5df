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


def refuse_large_n(user: User, n: int) -> None:
    """Without credentials a request asks for at most MAX_N_ANONYMOUS generations (400)."""
    cap = settings.KOBOLDCLUSTER["MAX_N_ANONYMOUS"]
    if not user.has_credentials and n > cap:
        raise BadRequest(
            f"Without an account a request may ask for at most {cap} "
            f"generations ({n} asked for): register for more.",
            rc="TooManyGenerations",
        )


# What one client has waiting, as SQL (the prompt_client_queue index serves it).
CLIENT_WAITING_SQL = (
    "SELECT COALESCE(SUM(c.waiting), 0) FROM generations_prompt c WHERE c.client = %s "
    "AND c.client <> '' AND c.state = 'live' AND c.waiting > 0 AND c.expires_at > %s"
)


def client_within_limit_sql(client: str, n: int, now_param: object) -> tuple[str, list[object]]:
    """The condition, for the statement that inserts a prompt, that `client` stays within
    CONCURRENCY_PER_CLIENT. Like the anonymous pool, it is not serialised: submits of one
    client in flight at the same instant may overshoot it by what the per-address rate limit
    lets through."""
    limit = settings.KOBOLDCLUSTER["CONCURRENCY_PER_CLIENT"]
    return f"({CLIENT_WAITING_SQL}) + %s <= %s", [client, now_param, n, limit]


def refuse_over_client_limit(client: str, n: int, now: datetime) -> None:
    """Raise 429 if `client` is over its limit (after an insert found no room)."""
    if not client:
        return
    waiting = (
        Prompt.objects.queued(now).filter(client=client).aggregate(total=Sum("waiting"))["total"]
        or 0
    )
    limit = settings.KOBOLDCLUSTER["CONCURRENCY_PER_CLIENT"]
    if waiting + n > limit:
        raise TooManyRequests(
            f"Too many generations waiting from your address without an account: {waiting} "
            f"queued, {n} more asked for, and the limit is {limit}. Wait until servers have "
            "taken some, or register.",
            rc="TooManyPrompts",
            retry_after=RETRY_AFTER,
        )
