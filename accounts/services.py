"""Who is asking, and what they paid: identity rules and ledger writes."""

from __future__ import annotations

import hashlib
import hmac
import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Max, Sum
from django.utils import timezone

from accounts.models import Balance, LedgerEntry, LedgerFold, User
from koboldcluster.errors import Forbidden, Unauthorized

logger = logging.getLogger(__name__)


def anonymous_user() -> User:
    """The shared anonymous account (id 0, made by a migration; remade if it went missing)."""
    user, _ = User.objects.get_or_create(
        pk=User.ANONYMOUS_ID,
        defaults={
            "username": User.ANONYMOUS_USERNAME,
            "kind": User.Kind.ANONYMOUS,
            "password": make_password(None),
        },
    )
    return user


def _password_cache_key(user: User, password: str) -> str:
    # Keyed by the server secret and the stored hash: the cache never holds anything that
    # could be used to recover or replay the password, and a password change invalidates it.
    message = f"{user.pk}:{user.password}:{password}".encode()
    digest = hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()
    return f"pw-ok:{digest}"


def password_matches(user: User, password: str) -> bool:
    """Check a password, remembering a success for a few minutes.

    Servers send their password with every pop (every second or so); a full PBKDF2 run each
    time would be most of the cluster's CPU.
    """
    if not password or not user.has_usable_password():
        return False
    key = _password_cache_key(user, password)
    if cache.get(key):
        return True
    if not user.check_password(password):
        return False
    cache.set(key, True, settings.KOBOLDCLUSTER["PASSWORD_CACHE_SECONDS"])
    return True


def _get_or_create_user(username: str, **fields: object) -> tuple[User, bool]:
    user = User.objects.filter(username=username).first()
    if user is not None:
        return user, False
    try:
        with transaction.atomic():
            return User.objects.create(username=username, **fields), True
    except IntegrityError:  # created by a concurrent request a moment ago
        return User.objects.get(username=username), False


def _check_password(user: User, password: str | None) -> None:
    if not password:
        raise Unauthorized(
            f"The username '{user.username}' belongs to an account with credentials: "
            "send its API key in the 'apikey' header, or its password.",
            rc="CredentialsRequired",
        )
    if not user.has_usable_password():
        raise Unauthorized(
            f"The account '{user.username}' has no password; use its API key.",
            rc="InvalidCredentials",
        )
    if not password_matches(user, password):
        raise Unauthorized(f"Wrong password for '{user.username}'.", rc="InvalidCredentials")


def user_for_request(
    *, username: str | None, password: str | None = None, api_user: User | None = None
) -> User:
    """The account a prompt is billed to.

    An API key wins. Without one, a bare `username` is tracked as an unclaimed name, but a
    name whose account has credentials needs them: nobody spends someone else's balance.
    """
    if api_user is not None:
        return api_user
    if not username or username == User.ANONYMOUS_USERNAME:
        return anonymous_user()
    user, _ = _get_or_create_user(username, kind=User.Kind.UNCLAIMED, password=make_password(None))
    if user.has_credentials:
        _check_password(user, password)
    return user


def user_for_server(
    *, username: str | None, password: str | None, api_user: User | None = None
) -> User:
    """The account a server works for; a new username becomes an account with this password."""
    if api_user is not None:
        user = api_user
    elif not username:
        raise Unauthorized(
            "A server needs an account: send 'username' and 'password', "
            "or an API key in the 'apikey' header.",
            rc="CredentialsRequired",
        )
    elif username == User.ANONYMOUS_USERNAME:
        user = anonymous_user()
    elif not password:
        raise Unauthorized(
            "A server needs a 'password' (or an API key in the 'apikey' header).",
            rc="CredentialsRequired",
        )
    else:
        user = _server_account(username, password)
    if user.is_anonymous_user:
        raise Forbidden(
            "Anonymous servers are not allowed: choose a username and password, or register.",
            rc="AnonForbiddenWorker",
        )
    return user


def _server_account(username: str, password: str) -> User:
    user = User.objects.filter(username=username).first()
    if user is None:
        # Hash only for a new account: make_password is the expensive part of a pop.
        user, created = _get_or_create_user(
            username, kind=User.Kind.REGISTERED, password=make_password(password)
        )
        if created:
            logger.info("account %s created by a server's first pop", user.pk)
            return user
    if user.kind == User.Kind.UNCLAIMED:
        # A name used by prompts so far: the first server to pop with it claims it.
        claimed = User.objects.filter(pk=user.pk, kind=User.Kind.UNCLAIMED).update(
            kind=User.Kind.REGISTERED, password=make_password(password)
        )
        user.refresh_from_db()
        if claimed:
            logger.info("account %s claimed by a server's first pop", user.pk)
            return user
    _check_password(user, password)
    return user


def verify_owner(*, owner: User, password: str | None, api_user: User | None = None) -> None:
    """Refuse a submit that does not come from the account that owns the job's server."""
    if api_user is not None:
        if api_user.pk != owner.pk:
            raise Forbidden("This job belongs to another account's server.", rc="WrongCredentials")
        return
    _check_password(owner, password)


def ledger_record_generation(
    *,
    requester_id: int,
    owner_id: int,
    tokens: int,
    server_id: object,
    job_id: object,
    model: str,
    now: datetime,
) -> None:
    """Append the usage and contribution pair for one delivered generation.

    Call inside the transaction that marks the job done: the pair and the state change
    commit together or not at all, and the unique (job_id, kind) makes a second pair fail.
    """
    common = {"tokens": tokens, "server_id": server_id, "job_id": job_id, "model": model}
    LedgerEntry.objects.bulk_create(
        [
            LedgerEntry(
                created=now,
                user_id=requester_id,
                kind=LedgerEntry.Kind.USAGE,
                kudos=-tokens,
                **common,
            ),
            LedgerEntry(
                created=now,
                user_id=owner_id,
                kind=LedgerEntry.Kind.CONTRIBUTION,
                kudos=tokens,
                **common,
            ),
        ]
    )


_BALANCE_FIELDS = {
    LedgerEntry.Kind.USAGE: ("tokens_used", "requests"),
    LedgerEntry.Kind.CONTRIBUTION: ("tokens_contributed", "fulfilments"),
}


def ledger_fold(*, now: datetime | None = None) -> int:
    """Fold settled ledger entries into `Balance`; return how many were folded.

    Idempotent and safe to run twice at once: the watermark row is locked (PostgreSQL) or the
    transaction holds SQLite's write lock, and the watermark only moves by a conditional
    update. Entries younger than LEDGER_FOLD_LAG_SECONDS are left for the next run, so an
    entry whose transaction commits late is never skipped.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.KOBOLDCLUSTER["LEDGER_FOLD_LAG_SECONDS"])
    with transaction.atomic():
        fold, _ = LedgerFold.objects.select_for_update().get_or_create(pk=1)
        start = fold.last_entry_id
        pending = LedgerEntry.objects.filter(id__gt=start)
        upper = pending.filter(created__lte=cutoff).aggregate(upper=Max("id"))["upper"]
        if upper is None:
            return 0
        rows = (
            pending.filter(id__lte=upper)
            .values_list("user_id", "kind")
            .annotate(Sum("tokens"), Sum("kudos"), Count("id"))
        )
        folded = 0
        for user_id, kind, tokens, kudos, count in rows:
            changes = {"kudos": F("kudos") + kudos}
            if kind in _BALANCE_FIELDS:
                tokens_field, count_field = _BALANCE_FIELDS[kind]
                changes[tokens_field] = F(tokens_field) + tokens
                changes[count_field] = F(count_field) + count
            Balance.objects.get_or_create(user_id=user_id)
            Balance.objects.filter(user_id=user_id).update(**changes)
            folded += count
        moved = LedgerFold.objects.filter(pk=1, last_entry_id=start).update(
            last_entry_id=upper, folded_at=now
        )
        if not moved:  # another fold got here first; undo ours
            transaction.set_rollback(True)
            return 0
    logger.info("ledger fold: %s entries folded up to id %s", folded, upper)
    return folded
