"""API keys and registration: keys are shown once and stored only as SHA-256 digests."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.contrib.auth.hashers import make_password
from django.db import connection, transaction
from django.utils import timezone

from accounts.identity import (
    USER_COLUMNS,
    _get_or_create_user,
    anonymous_user,
    claim_unclaimed,
    lock_account,
    user_from_row,
)
from accounts.models import ApiKey, User
from koboldcluster.errors import BadRequest, Forbidden, NotFound
from koboldcluster.rows import aware, instance

logger = logging.getLogger(__name__)

# --- API keys --------------------------------------------------------------------------------

# `last_used` is for people (which key is still in use?), not for security: writing it on every
# request would turn every pop into a write.
KEY_LAST_USED_WRITE = timedelta(seconds=60)


def new_key() -> str:
    """22 random URL-safe characters (what AI Horde clients accept) that do not start with "-":
    such a key breaks every command line that passes it as its own argument (`--apikey -x…`)."""
    while True:
        key = secrets.token_urlsafe(16)
        if not key.startswith("-"):
            return key


def apikey_issue(*, user: User, name: str = "", now: datetime | None = None) -> tuple[ApiKey, str]:
    """Make a new key for `user`; return its row and the key, which is never shown again."""
    if user.is_anonymous_user:
        raise Forbidden("The anonymous user cannot have API keys: register.", rc="AnonForbidden")
    key = new_key()
    api_key = ApiKey.objects.create(
        user=user, digest=ApiKey.digest_of(key), name=name, created=now or timezone.now()
    )
    logger.info("API key %s issued to user %s", api_key.pk, user.pk)
    return api_key, key


def apikey_authenticate(
    *, key: str, now: datetime | None = None
) -> tuple[User, ApiKey | None] | None:
    """The user a key names (with its row; None for the anonymous key), or None if no one."""
    if key == ApiKey.ANONYMOUS_KEY:
        return anonymous_user(), None
    # Every authenticated request makes this lookup: one hand-written statement.
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT k.id, k.last_used, {USER_COLUMNS} FROM accounts_apikey k "
            "JOIN accounts_user u ON u.id = k.user_id WHERE k.digest = %s "
            "AND k.revoked_at IS NULL AND u.is_active = %s",
            [ApiKey.digest_of(key), True],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    user = user_from_row(row[2:])
    api_key = instance(ApiKey, id=row[0], user=user, last_used=aware(row[1]))
    now = now or timezone.now()
    if api_key.last_used is None or api_key.last_used <= now - KEY_LAST_USED_WRITE:
        ApiKey.objects.filter(pk=api_key.pk).update(last_used=now)
        api_key.last_used = now
    return api_key.user, api_key


def apikey_revoke(*, user: User, key_id: int, now: datetime | None = None) -> ApiKey:
    """Revoke one of `user`'s keys at once (every request looks its key up).

    The last key of an account without a password is refused: revoking it would lock the
    owner out for good. Create a new key first.
    """
    now = now or timezone.now()
    with transaction.atomic():
        lock_account(user)  # two revokes at once must not both see "another key is left"
        active = ApiKey.objects.filter(user=user, revoked_at__isnull=True)
        api_key = active.filter(pk=key_id).first()
        if api_key is None:
            raise NotFound(f"You have no API key {key_id}.", rc="ApiKeyNotFound")
        if not user.has_usable_password() and not active.exclude(pk=key_id).exists():
            raise BadRequest(
                "This is the account's last API key: create a new one before revoking it.",
                rc="LastApiKey",
            )
        active.filter(pk=key_id).update(revoked_at=now)
    api_key.revoked_at = now
    logger.info("API key %s of user %s revoked", key_id, user.pk)
    return api_key


def apikeys_revoke(*, key_ids: Iterable[int], now: datetime | None = None) -> int:
    """Revoke keys by id, whosever they are (the admin's action); return how many."""
    revoked = ApiKey.objects.filter(pk__in=list(key_ids), revoked_at__isnull=True).update(
        revoked_at=now or timezone.now()
    )
    logger.info("%s API keys revoked by an administrator", revoked)
    return revoked


# --- Registration ----------------------------------------------------------------------------


def _registered_account(username: str) -> tuple[User, bool]:
    """A registered account named `username`: new, or claimed from an unclaimed name.

    Returns the user and whether it had credentials already. An unclaimed name has only been
    used by prompts without credentials; the first to register it (or to run a server with
    it) gets it, as in the original cluster.
    """
    if username == User.ANONYMOUS_USERNAME:
        raise BadRequest(f"The username '{username}' is reserved.", rc="UsernameTaken")
    user, created = _get_or_create_user(
        username, kind=User.Kind.REGISTERED, password=make_password(None)
    )
    if created:
        return user, False
    if claim_unclaimed(user):
        user.kind = User.Kind.REGISTERED
        logger.info("account %s claimed by registration", user.pk)
        return user, False
    return user, True


def account_register(*, username: str, now: datetime | None = None) -> tuple[User, str]:
    """Create the registered account `username` with a first API key; return both.

    A name that already belongs to an account with credentials is refused (400).
    """
    with transaction.atomic():
        user, existed = _registered_account(username)
        if existed:
            raise BadRequest(f"The username '{username}' is taken.", rc="UsernameTaken")
        _, key = apikey_issue(user=user, name="registration", now=now)
    logger.info("account %s registered", user.pk)
    return user, key


def apikey_issue_for_username(
    *, username: str, name: str = "", now: datetime | None = None
) -> tuple[User, str, bool]:
    """The operator's way (`createapikey`): a new key for `username`, registering it if needed.

    Returns the user, the key and whether the account was registered just now.
    """
    with transaction.atomic():
        user, existed = _registered_account(username)
        _, key = apikey_issue(user=user, name=name, now=now)
    return user, key, not existed
