"""Who is asking, and what they paid: identity rules and ledger writes."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Max, Sum
from django.utils import timezone

from accounts import guard
from accounts.models import ApiKey, Balance, LedgerEntry, LedgerFold, User
from accounts.selectors import totals_for
from koboldcluster.errors import BadRequest, Forbidden, NotFound, Unauthorized

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
    if not guard.password_verified(user, password):
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
        guard.count_new_account()
        # Hash only for a new account: make_password is the expensive part of a pop.
        user, created = _get_or_create_user(
            username, kind=User.Kind.REGISTERED, password=make_password(password)
        )
        if created:
            logger.info("account %s created by a server's first pop", user.pk)
            return user
    if user.kind == User.Kind.UNCLAIMED:
        # A name used by prompts so far: the first server to pop with it claims it.
        guard.count_new_account()
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


def user_by_password(*, username: str, password: str | None) -> User:
    """The registered account `username` after checking its password (401 otherwise)."""
    user = User.objects.filter(username=username, kind=User.Kind.REGISTERED).first()
    if user is None:
        raise Unauthorized(f"No account '{username}' has credentials.", rc="InvalidCredentials")
    _check_password(user, password)
    return user


def lock_account(user: User) -> None:
    """Serialise writers that must see each other's effect on `user` (call in a transaction).

    FOR NO KEY UPDATE, unlike FOR UPDATE, does not block the inserts that merely reference
    the user (prompts, ledger entries). On SQLite the transaction already holds the one write
    lock, so there is nothing to add.
    """
    list(User.objects.select_for_update(no_key=True).filter(pk=user.pk).values_list("pk"))


# --- API keys --------------------------------------------------------------------------------

# `last_used` is for people (which key is still in use?), not for security: writing it on every
# request would turn every pop into a write.
KEY_LAST_USED_WRITE = timedelta(seconds=60)


def apikey_issue(*, user: User, name: str = "", now: datetime | None = None) -> tuple[ApiKey, str]:
    """Make a new key for `user`; return its row and the key, which is never shown again."""
    if user.is_anonymous_user:
        raise Forbidden("The anonymous user cannot have API keys: register.", rc="AnonForbidden")
    key = secrets.token_urlsafe(16)  # 22 characters: what AI Horde clients accept
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
    api_key = (
        ApiKey.objects.select_related("user")
        .filter(digest=ApiKey.digest_of(key), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if api_key is None:
        return None
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
    if User.objects.filter(pk=user.pk, kind=User.Kind.UNCLAIMED).update(kind=User.Kind.REGISTERED):
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


# --- Priority users --------------------------------------------------------------------------

_HORDE_NAME = re.compile(r"#([0-9]{1,18})\Z")


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
            match = _HORDE_NAME.search(entry)
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


def kudos_transfer(
    *, sender: User, recipient: str, amount: int, now: datetime | None = None
) -> User:
    """Move `amount` of `sender`'s balance to `recipient` (`alias#id` or a username).

    Two adjustment entries in one transaction, after the sender's balance was read under the
    sender's lock: two transfers at once cannot both spend the same tokens. Refused (400):
    anonymous senders or recipients, names without an account, oneself, amounts below 1 and
    more than the sender's balance. Returns the recipient.
    """
    now = now or timezone.now()
    if sender.is_anonymous_user:
        raise BadRequest("The anonymous user cannot send kudos.", rc="KudosTransferFromAnon")
    if amount < 0:
        raise BadRequest("Kudos transfers must be positive.", rc="NegativeKudosTransfer")
    if amount == 0:
        raise BadRequest("Transfer at least 1 kudos.", rc="InvalidKudosTransferAmount")
    target = _transfer_target(recipient)
    if target.is_anonymous_user:
        raise BadRequest("Kudos cannot be sent to the anonymous user.", rc="KudosTransferToAnon")
    if target.pk == sender.pk:
        raise BadRequest("You cannot send kudos to yourself.", rc="KudosTransferToSelf")
    with transaction.atomic():
        lock_account(sender)
        balance = totals_for(sender).kudos
        if amount > balance:
            raise BadRequest(
                f"Not enough kudos: the balance is {balance}, {amount} asked for.",
                rc="KudosTransferNotEnough",
            )
        common = {"created": now, "kind": LedgerEntry.Kind.ADJUSTMENT, "model": "transfer"}
        LedgerEntry.objects.bulk_create(
            [
                LedgerEntry(user=sender, kudos=-amount, **common),
                LedgerEntry(user=target, kudos=amount, **common),
            ]
        )
    logger.info("kudos transfer: %s from user %s to user %s", amount, sender.pk, target.pk)
    return target


def _transfer_target(recipient: str) -> User:
    match = _HORDE_NAME.search(recipient)
    if match is not None:
        user = User.objects.filter(pk=int(match.group(1))).first()
    else:
        user = User.objects.filter(username=recipient).first()
    if user is None or user.kind == User.Kind.UNCLAIMED:
        # An unclaimed name goes to whoever registers it first: nothing to send to yet.
        raise BadRequest(f"No account {recipient!r} can receive kudos.", rc="InvalidTargetUsername")
    return user


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
    return folded
