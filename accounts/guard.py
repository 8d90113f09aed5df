"""Password guessing costs the guesser, not the cluster.

Checking a password runs a deliberately slow hash (PBKDF2: about a quarter of a CPU-second),
and servers send their password with every pop. A verified password is remembered for a few
minutes (`services.password_matches`); this module makes failures cheap too:

- a wrong password already refused for an account is remembered as a keyed digest (HMAC with
  the secret key, over the account, its stored hash and the password; never the password) and
  refused again at once;
- after a failure, neither the client's address block nor the account gets another password
  hashed for PASSWORD_LOCKOUT_SECONDS: 429 `TooManyPasswordAttempts` with `Retry-After`,
  without hashing. At most one password of an account, and of a client, is hashed at a time.
  A password verified before still passes (it never reaches this module), so someone guessing
  an account's password does not stop its running servers;
- a pop that creates (or claims) an account hashes its password once: that is limited per
  client (`KOBOLDCLUSTER_RATE_NEW_ACCOUNT_IP`), apart from the pops themselves.

The counts live in `koboldcluster.counters`, shared by every process (and machine, with Redis).
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from django.conf import settings

from accounts.models import User
from koboldcluster import counters
from koboldcluster.clients import current_client
from koboldcluster.errors import TooManyRequests
from koboldcluster.throttling import client_rate_check

logger = logging.getLogger(__name__)

# How long a password check in flight keeps others of its account and client waiting (an
# upper bound: it ends when the hash does).
CHECK_IN_FLIGHT_SECONDS = 5


def _refused_key(user: User, password: str) -> str:
    message = f"{user.pk}:{user.password}:{password}".encode()
    digest = hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()
    return f"pw-refused:{digest}"


def _subjects(user: User) -> list[str]:
    client = current_client()
    return [f"account:{user.pk}"] + ([f"client:{client}"] if client else [])


def _refuse(seconds: int) -> TooManyRequests:
    return TooManyRequests(
        "A wrong password was sent for this account or from your address a moment ago, or "
        f"another check is under way: try again in {seconds} seconds.",
        rc="TooManyPasswordAttempts",
        retry_after=seconds,
    )


def password_verified(user: User, password: str) -> bool:
    """Check `password` against `user`'s hash, unless a failure makes that pointless (429)."""
    refused = _refused_key(user, password)
    if counters.peek(refused):
        return False
    lockout = settings.KOBOLDCLUSTER["PASSWORD_LOCKOUT_SECONDS"]
    subjects = _subjects(user)
    if any(counters.peek(f"pw-failed:{subject}") for subject in subjects):
        raise _refuse(lockout)
    taken = []
    try:
        for subject in subjects:
            taken.append(f"pw-checking:{subject}")
            if counters.hit(taken[-1], CHECK_IN_FLIGHT_SECONDS) > 1:
                taken.pop()  # someone else's check: not ours to release
                raise _refuse(1)
        if user.check_password(password):
            return True
        counters.hit(refused, settings.KOBOLDCLUSTER["PASSWORD_CACHE_SECONDS"])
        for subject in subjects:
            counters.hit(f"pw-failed:{subject}", lockout)
        logger.info("wrong password for account %s", user.pk)
        return False
    finally:
        for key in taken:
            counters.reset(key)


def count_new_account() -> None:
    """Count an account a pop is about to create or claim (and hash a password for)."""
    client_rate_check("new_account", "new accounts")
