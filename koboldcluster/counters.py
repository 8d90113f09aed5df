"""Counters every web process shares: rate limit windows and password lockouts.

A limit that each process counts on its own lets through as many times the limit as there
are processes (the default server runs several). So the counts live where every process sees
them, and each hit is one atomic increment:

- with `REDIS_URL`: in Redis (INCR), shared by every machine of the cluster;
- without: in a small SQLite file of their own (`var/counters.sqlite3`), shared by the
  processes of this machine. One UPSERT … RETURNING per hit, under SQLite's file lock, so two
  processes can never both read the same count. It is not the cluster's database: a rate
  limit check must not queue behind the queue's writers (on SQLite the database has one
  writer at a time), and a lost counter file only forgets some counts, nothing else.
  Durability is not needed (synchronous=OFF): a crash may forget the last few hits.

Keys are opaque strings; callers put digests in them, never addresses or passwords.
"""

from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from pathlib import Path

from django.conf import settings
from django.core.cache import cache

# One hit in this many also deletes expired counters.
_CLEANUP_EVERY = 1000

_local = threading.local()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counter (
    key TEXT PRIMARY KEY, count INTEGER NOT NULL, expires REAL NOT NULL
) WITHOUT ROWID
"""
# A counter past its expiry starts again from 1 with a new expiry.
_HIT = """
INSERT INTO counter (key, count, expires) VALUES (?1, 1, ?2 + ?3)
ON CONFLICT (key) DO UPDATE SET
    count = CASE WHEN expires <= ?2 THEN 1 ELSE count + 1 END,
    expires = CASE WHEN expires <= ?2 THEN excluded.expires ELSE expires END
RETURNING count
"""


def _path() -> Path:
    return Path(settings.KOBOLDCLUSTER["COUNTERS_FILE"])


def _connection() -> sqlite3.Connection:
    """This thread's connection (a forked process opens its own)."""
    connection = getattr(_local, "connection", None)
    if connection is None or _local.pid != os.getpid() or _local.path != _path():
        connection = sqlite3.connect(_path(), timeout=10, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute(_SCHEMA)
        _local.connection, _local.pid, _local.path = connection, os.getpid(), _path()
    return connection


def _shared_by_redis() -> bool:
    return bool(settings.REDIS_URL)


def hit(key: str, seconds: int) -> int:
    """Add one to `key` and return its count; a new (or expired) counter lives `seconds`."""
    if _shared_by_redis():
        try:
            return cache.incr(key)
        except ValueError:  # a new counter
            return 1 if cache.add(key, 1, seconds) else cache.incr(key)
    now = time.time()
    connection = _connection()
    (count,) = connection.execute(_HIT, (key, now, seconds)).fetchone()
    if random.randrange(_CLEANUP_EVERY) == 0:
        connection.execute("DELETE FROM counter WHERE expires <= ?", (now,))
    return count


def peek(key: str) -> int:
    """The count of `key` (0 when it is new or expired), without adding to it."""
    if _shared_by_redis():
        return cache.get(key) or 0
    row = (
        _connection()
        .execute("SELECT count FROM counter WHERE key = ? AND expires > ?", (key, time.time()))
        .fetchone()
    )
    return row[0] if row else 0


def clear() -> None:
    """Forget every count of this machine's file (tests; Redis counts expire by themselves)."""
    if _shared_by_redis():
        return
    _connection().execute("DELETE FROM counter")


def reset(key: str) -> None:
    """Forget one counter."""
    if _shared_by_redis():
        cache.delete(key)
        return
    _connection().execute("DELETE FROM counter WHERE key = ?", (key,))
