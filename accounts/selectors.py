"""Exact ledger totals: what the fold has written plus the entries it has not reached yet."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from uuid import UUID

from django.db.models import Count, Sum
from django.db.models.functions import Coalesce

from accounts.models import ApiKey, Balance, LedgerEntry, LedgerFold, User


@dataclass(frozen=True)
class Totals:
    tokens_used: int = 0
    tokens_contributed: int = 0
    kudos: int = 0
    requests: int = 0
    fulfilments: int = 0


def _add_tail_row(totals: Totals, kind: str, tokens: int, kudos: int, count: int) -> Totals:
    totals = replace(totals, kudos=totals.kudos + kudos)
    if kind == LedgerEntry.Kind.USAGE:
        return replace(
            totals, tokens_used=totals.tokens_used + tokens, requests=totals.requests + count
        )
    if kind == LedgerEntry.Kind.CONTRIBUTION:
        return replace(
            totals,
            tokens_contributed=totals.tokens_contributed + tokens,
            fulfilments=totals.fulfilments + count,
        )
    return totals


def _watermark() -> int:
    return LedgerFold.objects.values_list("last_entry_id", flat=True).first() or 0


def user_totals(user_ids: Iterable[int] | None = None) -> dict[int, Totals]:
    """Totals per user id (all users with any entry when `user_ids` is None).

    The fold may commit between our reads; reading the watermark before and after and retrying
    when it moved keeps the sum exact without locking anything.
    """
    ids = list(user_ids) if user_ids is not None else None
    while True:
        watermark = _watermark()
        balances = Balance.objects.all()
        tail = LedgerEntry.objects.filter(id__gt=watermark)
        if ids is not None:
            balances = balances.filter(user_id__in=ids)
            tail = tail.filter(user_id__in=ids)
        totals = {
            b.user_id: Totals(
                b.tokens_used, b.tokens_contributed, b.kudos, b.requests, b.fulfilments
            )
            for b in balances
        }
        rows = tail.values_list("user_id", "kind").annotate(
            Sum("tokens"), Sum("kudos"), Count("id")
        )
        for user_id, kind, tokens, kudos, count in rows:
            totals[user_id] = _add_tail_row(
                totals.get(user_id, Totals()), kind, tokens, kudos, count
            )
        if _watermark() == watermark:
            return totals


def balance_sql(user_id: int) -> tuple[str, list[object]]:
    """The user's exact balance (kudos) as one SQL expression with its parameters.

    Folded balance plus the entries past the fold's watermark, read in one statement: a
    single statement sees one snapshot, so the fold cannot slip between the two parts. For
    statements that read the balance together with the change they make (a prompt's
    priority).
    """
    folded = "SELECT b.kudos FROM accounts_balance b WHERE b.user_id = %s"
    watermark = "SELECT f.last_entry_id FROM accounts_ledgerfold f ORDER BY f.id LIMIT 1"
    tail = (
        "SELECT SUM(e.kudos) FROM accounts_ledgerentry e WHERE e.user_id = %s "
        f"AND e.id > COALESCE(({watermark}), 0)"
    )
    return f"(COALESCE(({folded}), 0) + COALESCE(({tail}), 0))", [user_id, user_id]


def totals_for(user: User) -> Totals:
    return user_totals([user.pk]).get(user.pk, Totals())


def tokens_by_username(field: str) -> dict[str, int]:
    """`{"username": tokens}` for `/usage` (tokens_used) and `/contributions`."""
    totals = user_totals()
    names = dict(User.objects.filter(pk__in=totals.keys()).values_list("pk", "username"))
    return {
        names[user_id]: getattr(t, field)
        for user_id, t in sorted(totals.items())
        if getattr(t, field) and user_id in names
    }


def api_keys_of(user: User) -> list[ApiKey]:
    """A user's keys that still work, oldest first (digests only: keys are never stored)."""
    return list(user.api_keys.filter(revoked_at__isnull=True).order_by("id"))


@dataclass(frozen=True)
class UserDetails:
    """What `/api/v2/users/<id>` and `find_user` show; the private parts only if `privileged`."""

    user: User
    totals: Totals
    server_count: int
    privileged: bool
    server_ids: list[UUID] = field(default_factory=list)
    active_prompt_ids: list[UUID] = field(default_factory=list)


def user_details(user: User, *, privileged: bool, now: datetime | None = None) -> UserDetails:
    """The user's totals and servers; with `privileged`, their server and live prompt ids.

    Never privileged for the anonymous user: its prompts are everyone's without a key, and
    their ids are enough to read or cancel them.
    """
    privileged = privileged and not user.is_anonymous_user
    servers = user.servers.order_by("created").values_list("id", flat=True)
    details = UserDetails(
        user=user,
        totals=totals_for(user),
        server_count=servers.count(),
        privileged=privileged,
    )
    if not privileged:
        return details
    prompts = user.prompts.live(now).filter(state="live").order_by("created")
    return replace(
        details,
        server_ids=list(servers),
        active_prompt_ids=list(prompts.values_list("id", flat=True)),
    )


USERS_PER_PAGE = 25


def users_page(*, page: int, sort: str = "kudos") -> list[UserDetails]:
    """One page of users (public details), by balance (`kudos`) or by age (`age`, oldest first).

    The order by balance reads the folded balances, so entries from the last minute or so
    may not have moved a user yet; the totals shown are exact.
    """
    users = User.objects.annotate(folded_kudos=Coalesce("balance__kudos", 0))
    order = ("-folded_kudos", "id") if sort == "kudos" else ("date_joined", "id")
    start = (page - 1) * USERS_PER_PAGE
    chunk = list(users.order_by(*order)[start : start + USERS_PER_PAGE])
    ids = [user.pk for user in chunk]
    totals = user_totals(ids)
    # Through the reverse relation: accounts does not import the servers app above it.
    servers = dict(
        User.objects.filter(pk__in=ids).annotate(n=Count("servers")).values_list("pk", "n")
    )
    return [
        UserDetails(
            user=user,
            totals=totals.get(user.pk, Totals()),
            server_count=servers.get(user.pk, 0),
            privileged=False,
        )
        for user in chunk
    ]
