"""One Redis connection pool per process for Django's cache (settings.CACHES with REDIS_URL).

Django keeps a cache object per async context, and every request of the ASGI server runs in a
context of its own, so each request that touched the cache made a cache object, a connection
pool and a new connection to Redis (a TCP handshake and a HELLO): measured by
benchmarks/scripts/bench_cluster.py as about four new connections per generation. Handing every
cache object of the process the same pool keeps the connections open between requests, as
CONN_MAX_AGE keeps the database's.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis

_lock = threading.Lock()


class SharedConnectionPool(redis.ConnectionPool):
    _pools: dict[tuple[Any, ...], redis.ConnectionPool] = {}

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> redis.ConnectionPool:
        """The process's pool for `url` and these options (a new one after a fork)."""
        key = (url, os.getpid(), *sorted(kwargs.items(), key=lambda item: item[0]))
        with _lock:
            pool = cls._pools.get(key)
            if pool is None:
                pool = cls._pools[key] = super().from_url(url, **kwargs)
        return pool
