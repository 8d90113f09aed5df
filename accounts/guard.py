"""Password guessing costs the guesser, not the cluster.

Checking a password runs a deliberately slow hash (PBKDF2: about a quarter of a CPU-second),
and servers send their password with every pop. A verified password is remembered for a few
minutes (`services.password_matches`); this module makes failures cheap too:

- a wrong password already refused for an account is remembered as a keyed digest (HMAC with
  the secret key, over the account, its stored hash and the password; never the password) and
  refused again at once;
- after a failure, neither the client's address block nor the account gets another password
  hashed for PASSWORD_LOCKOUT_SECONDS: 429 `TooManyPasswordAttempts` with `Retry-After`,
  without hashing. At most one password of an account, and of a client, is hashed at a time:
  requests with the same password (a bridge's threads starting together) wait for that check's
  answer, a different one meanwhile is refused (429). A password verified in the last
  PASSWORD_CACHE_SECONDS passes at once, in every process, and one in use is remembered anew
  (`identity.password_matches`), so someone guessing an account's password does not stop its
  running servers;
- a pop that creates (or claims) an account hashes its password once: that is limited per
  client (`KOBOLDCLUSTER_RATE_NEW_ACCOUNT_IP`), apart from the pops themselves.

The counts live in `koboldcluster.counters`, shared by every process (and machine, with Redis).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

from django.conf import settings

from accounts.models import User
from koboldcluster import counters
from koboldcluster.clients import current_client
from koboldcluster.errors import TooManyRequests
from koboldcluster.throttling import client_rate_check

logger = logging.getLogger(__name__)

# How long a password check in flight keeps others of its account and client waiting (an
# upper bound: it ends when the hash does), and how often a check of the same password polls.
CHECK_IN_FLIGHT_SECONDS = 5
POLL_SECONDS = 0.05


def _digest(user: User, password: str) -> str:
    """Keyed by the server secret and the stored hash: nothing that could recover or replay
    the password, and a password change makes every remembered answer moot."""
    message = f"{user.pk}:{user.password}:{password}".encode()
    return hmac.new(settings.SECRET_KEY.encode(), message, hashlib.sha256).hexdigest()


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


def _known(digest: str) -> bool | None:
    """The answer for this password if it was checked lately (by any process), else None."""
    if counters.peek(f"pw-verified:{digest}"):
        return True
    if counters.peek(f"pw-refused:{digest}"):
        return False
    return None


def password_verified(user: User, password: str) -> bool:
    """Check `password` against `user`'s hash, unless a failure makes that pointless (429).

    Several threads of one bridge start with the same password at once: they wait for the
    one check in flight of that password instead of hashing it again. A different password
    meanwhile is refused at once (a guesser varies them).
    """
    digest = _digest(user, password)
    known = _known(digest)
    if known is not None:
        return known
    lockout = settings.KOBOLDCLUSTER["PASSWORD_LOCKOUT_SECONDS"]
    subjects = _subjects(user)
    if any(counters.peek(f"pw-failed:{subject}") for subject in subjects):
        raise _refuse(lockout)
    in_flight = f"pw-checking-password:{digest}"
    counters.hit(in_flight, CHECK_IN_FLIGHT_SECONDS)
    taken: list[str] = []
    try:
        for subject in subjects:
            taken.append(f"pw-checking:{subject}")
            if counters.hit(taken[-1], CHECK_IN_FLIGHT_SECONDS) > 1:
                taken.pop()  # someone else's check: not ours to release
                return _await_check(digest, in_flight)
        return _check(user, password, digest, subjects, lockout)
    finally:
        for key in taken:
            counters.reset(key)
        counters.reset(in_flight)


def _await_check(digest: str, in_flight: str) -> bool:
    """Another check is in flight: if it is of this very password, take its answer."""
    known = _known(digest)  # it may have ended a moment ago
    if known is not None:
        return known
    if counters.peek(in_flight) < 2:  # only ours: the check in flight is of another password
        raise _refuse(1)
    deadline = time.monotonic() + CHECK_IN_FLIGHT_SECONDS
    while time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
        known = _known(digest)
        if known is not None:
            return known
    raise _refuse(1)


def _check(user: User, password: str, digest: str, subjects: list[str], lockout: int) -> bool:
    remember = settings.KOBOLDCLUSTER["PASSWORD_CACHE_SECONDS"]
    if user.check_password(password):
        counters.hit(f"pw-verified:{digest}", remember)
        return True
    counters.hit(f"pw-refused:{digest}", remember)
    for subject in subjects:
        counters.hit(f"pw-failed:{subject}", lockout)
    logger.info("wrong password for account %s", user.pk)
    return False


def remember_verified(user: User, password: str) -> None:
    """`password` is known to match `user`'s hash (it was just hashed into it, or is in use):
    every process passes it at once for PASSWORD_CACHE_SECONDS from now, as after a check."""
    remember = settings.KOBOLDCLUSTER["PASSWORD_CACHE_SECONDS"]
    key = f"pw-verified:{_digest(user, password)}"
    counters.reset(key)  # a counter's life is set when it is made: made anew
    counters.hit(key, remember)


def count_new_account() -> None:
    """Count an account a pop is about to create or claim (and hash a password for)."""
    client_rate_check("new_account", "new accounts")
