"""Who is asking: the anonymous user, passwords, and which account a request or a server is.

A name with credentials is never used without them (nobody spends someone else's balance); a
verified password is remembered as a keyed digest, because servers send it with every pop.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from django.apps import apps
from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.cache import cache
from django.db import IntegrityError, connection, transaction
from django.db.models import Exists
from django.utils import timezone

from accounts import guard
from accounts.models import User
from koboldcluster.errors import BadRequest, Conflict, Forbidden, Unauthorized
from koboldcluster.rows import instance

logger = logging.getLogger(__name__)

# The columns a hot path reads of a user, and the instance built from them (the ORM's query
# compilation would cost more than the lookup; see generations/sql.py).
USER_COLUMNS = (
    "u.id, u.username, u.password, u.kind, u.trusted, u.moderator, u.is_active, u.concurrency"
)


def user_from_row(row: Sequence[Any]) -> User:
    """A User from USER_COLUMNS (its other fields are deferred: read-only use)."""
    return instance(
        User,
        id=row[0],
        username=row[1],
        password=row[2],
        kind=row[3],
        trusted=bool(row[4]),
        moderator=bool(row[5]),
        is_active=bool(row[6]),
        concurrency=row[7],
    )


def _user_where(condition: str, value: object) -> User | None:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {USER_COLUMNS} FROM accounts_user u WHERE {condition}", [value])
        row = cursor.fetchone()
    return user_from_row(row) if row else None


def anonymous_user() -> User:
    """The shared anonymous account (id 0, made by a migration; remade if it went missing)."""
    user = _user_where("u.id = %s", User.ANONYMOUS_ID)
    if user is not None:
        return user
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
    verified_at = cache.get(key)
    if verified_at:
        _refresh_when_old(user, password, key, verified_at)
        return True
    if not guard.password_verified(user, password):
        return False
    cache.set(key, time.time(), settings.KOBOLDCLUSTER["PASSWORD_CACHE_SECONDS"])
    return True


def _refresh_when_old(user: User, password: str, key: str, verified_at: float) -> None:
    """Keep a password in use remembered: past half its time, remembered anew (here and in
    every process). Otherwise a running server's password would be hashed again every few
    minutes, and a wrong guess by anyone just before that would lock the server out."""
    remember = settings.KOBOLDCLUSTER["PASSWORD_CACHE_SECONDS"]
    now = time.time()
    if now - float(verified_at) > remember / 2:
        cache.set(key, now, remember)
        guard.remember_verified(user, password)


def password_check_is_quick(user: User, password: str | None) -> bool:
    """Whether `check_password(user, password)` answers without hashing: no password, or one
    verified a moment ago. A check inside a write transaction must not hold it for a hash."""
    if not password or not user.has_usable_password():
        return True
    return bool(cache.get(_password_cache_key(user, password)))


def _remember_password(user: User, password: str) -> None:
    """`password` was just hashed into `user`'s account (a pop that created or claimed it):
    remember it as verified, as a check would. Otherwise the server's next authenticated
    request hashes it again -- with a long-poll pop, its first progress post, on the web
    process's one sync thread: 0.3 s of CPU, over a second on a loaded machine, while the
    generation's first text waits for it."""
    cache.set(
        _password_cache_key(user, password),
        time.time(),
        settings.KOBOLDCLUSTER["PASSWORD_CACHE_SECONDS"],
    )
    guard.remember_verified(user, password)


def _get_or_create_user(username: str, **fields: object) -> tuple[User, bool]:
    user = _user_where("u.username = %s", username)
    if user is not None:
        return user, False
    try:
        with transaction.atomic():
            return User.objects.create(username=username, **fields), True
    except IntegrityError:  # created by a concurrent request a moment ago
        return User.objects.get(username=username), False


def check_password(user: User, password: str | None) -> None:
    if not user.has_usable_password():
        # Registered on /register or with createapikey: the account has keys, no password.
        raise Unauthorized(
            f"The username '{user.username}' belongs to a registered account without a "
            "password: send its API key in the 'apikey' header.",
            rc="InvalidCredentials" if password else "CredentialsRequired",
        )
    if not password:
        raise Unauthorized(
            f"The username '{user.username}' belongs to an account with credentials: "
            "send its password, or its API key in the 'apikey' header.",
            rc="CredentialsRequired",
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
        check_password(user, password)
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
        guard.count_new_account()
        # Hash only for a new account: make_password is the expensive part of a pop.
        user, created = _get_or_create_user(
            username, kind=User.Kind.REGISTERED, password=make_password(password)
        )
        if created:
            logger.info("account %s created by a server's first pop", user.pk)
            _remember_password(user, password)
            return user
    if user.kind == User.Kind.UNCLAIMED:
        # A name used by prompts so far: the first server to pop with it claims it.
        guard.count_new_account()
        claimed = claim_unclaimed(user, password=make_password(password))
        user.refresh_from_db()
        if claimed:
            logger.info("account %s claimed by a server's first pop", user.pk)
            _remember_password(user, password)
            return user
    check_password(user, password)
    return user


def claim_unclaimed(user: User, **fields: object) -> bool:
    """Make the unclaimed name `user` a registered account (with `fields`); False if it was
    claimed meanwhile. Refused (409) while the name has live prompts: they are someone's who
    sent the bare name, and an account sees its prompts' text and generations, cancels them
    and serves them first. Once they expire, nothing of theirs is left to hand over.
    """
    prompts = apps.get_model("generations", "Prompt").objects  # a layer above: not imported
    live = prompts.filter(user_id=user.pk, expires_at__gt=timezone.now())
    unclaimed = User.objects.filter(pk=user.pk, kind=User.Kind.UNCLAIMED)
    if unclaimed.exclude(Exists(live)).update(kind=User.Kind.REGISTERED, **fields):
        return True
    if unclaimed.exists():
        raise Conflict(
            f"The name '{user.username}' has requests in progress, sent without credentials; "
            "it can be claimed once they are over (a few minutes). Try again then, or choose "
            "another name.",
            rc="NameInUse",
        )
    return False


def verify_owner(*, owner: User, password: str | None, api_user: User | None = None) -> None:
    """Refuse a submit that does not come from the account that owns the job's server."""
    if api_user is not None:
        if api_user.pk != owner.pk:
            raise Forbidden("This job belongs to another account's server.", rc="WrongCredentials")
        return
    check_password(owner, password)


def user_by_password(*, username: str, password: str | None) -> User:
    """The registered account `username` after checking its password (401 otherwise)."""
    user = User.objects.filter(username=username, kind=User.Kind.REGISTERED).first()
    if user is None:
        raise Unauthorized(f"No account '{username}' has credentials.", rc="InvalidCredentials")
    check_password(user, password)
    return user


def lock_account(user: User) -> None:
    """Serialise writers that must see each other's effect on `user` (call in a transaction).

    FOR NO KEY UPDATE, unlike FOR UPDATE, does not block the inserts that merely reference
    the user (prompts, ledger entries). On SQLite the transaction already holds the one write
    lock, so there is nothing to add.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(LOCK_ACCOUNT_SQL, [user.pk])


# PostgreSQL's lock of lock_account, for a statement list that sends it with what it guards.
LOCK_ACCOUNT_SQL = "SELECT id FROM accounts_user WHERE id = %s FOR NO KEY UPDATE"


# --- Priority users --------------------------------------------------------------------------

HORDE_NAME = re.compile(r"#([0-9]{1,18})\Z")


def priority_user_ids(entries: Iterable[str]) -> set[int]:
    """The ids of the users a server serves first.

    An entry is `alias#id` (the AI Horde's form: only the id counts) or a plain username.
    Users that do not exist are ignored, so a server's list may name friends who have not
    registered yet.
    """
    ids: set[int] = set()
    names: list[str] = []
    for entry in entries:
        if "#" in entry:
            match = HORDE_NAME.search(entry)
            if match is None:
                raise BadRequest(
                    f"Priority username {entry!r} must look like alias#id, e.g. alice#12.",
                    rc="InvalidPriorityUsername",
                )
            ids.add(int(match.group(1)))
        elif entry:
            names.append(entry)
        else:
            raise BadRequest("A priority username is empty.", rc="InvalidPriorityUsername")
    if names:
        ids.update(User.objects.filter(username__in=names).values_list("pk", flat=True))
    return ids
