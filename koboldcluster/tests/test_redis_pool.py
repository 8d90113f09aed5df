"""Django's cache keeps one object per async context, and each request of the ASGI server runs
in a context of its own: with Redis, every such object must share the process's connections
(koboldcluster/redis_pool.py), or every request opens a connection of its own."""

from __future__ import annotations

import contextvars

from django.core.cache.backends.redis import RedisCache

from koboldcluster.redis_pool import SharedConnectionPool

URL = "redis://127.0.0.1:6379/5"
OPTIONS = {"pool_class": "koboldcluster.redis_pool.SharedConnectionPool"}


def _pool_in_a_context_of_its_own() -> object:
    """What a request's cache object would use (no connection is made)."""

    def pool() -> object:
        cache = RedisCache(URL, {"OPTIONS": OPTIONS})
        return cache._cache._get_connection_pool(write=True)

    return contextvars.copy_context().run(pool)


def test_cache_objects_of_different_requests_share_one_pool():
    first, second = _pool_in_a_context_of_its_own(), _pool_in_a_context_of_its_own()
    assert first is second
    assert isinstance(first, SharedConnectionPool)


def test_another_server_or_other_options_get_a_pool_of_their_own():
    one = SharedConnectionPool.from_url(URL)
    assert SharedConnectionPool.from_url("redis://127.0.0.1:6379/6") is not one
    assert SharedConnectionPool.from_url(URL, socket_timeout=1) is not one
    assert SharedConnectionPool.from_url(URL) is one


def test_without_it_every_cache_object_had_its_own_pool():
    """The behaviour this replaces (Django's default pool class), for the record."""
    plain = [RedisCache(URL, {})._cache._get_connection_pool(write=True) for _ in range(2)]
    assert plain[0] is not plain[1]
