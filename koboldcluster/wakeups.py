"""Wake-ups: tell requests that wait (long-poll pops, waiting clients) that something changed.

`notify(topic)` may be called from any synchronous code, in any thread or process (call it once
the change is committed: `notify_on_commit`). `listening(topic)` / `wait(topic, timeout)` are
for async views. Topics: `"queue"` (a prompt was created or a slot came back) and
`"prompt:<id>"` (a job of that prompt finished or faulted, or the prompt was cancelled).

A notification reaches, besides the waiters of its own process:
- with `REDIS_URL`: every process on every node, through Redis pub/sub (one channel per
  database, so clusters sharing a Redis stay apart);
- without: the other web processes of this machine, through one Unix datagram socket per
  listening process in the var dir. Datagrams need no broker, no connection and no thread:
  a send is one system call, and the reader is an event-loop callback.

Waiting costs nothing: a waiter is an `asyncio.Event`. `"queue"` wakes its waiters one at a
time, oldest first: the woken one tries to pop and passes the wake-up on (`done`) if others
may still find work. Waking all of them for one new prompt would make hundreds of servers
query the database at once for a single slot. A wake-up may be lost (a full socket buffer,
Redis down): a re-check every WAKEUP_RECHECK_SECONDS compares a cheap fingerprint of the
queue (`set_recheck`) and wakes the waiters when it moved, so a lost wake-up only delays.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import socket
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from functools import partial

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import connections, transaction

from koboldcluster.wakeup_senders import (
    MAX_DATAGRAM,
    SENDER,
    datagram_broadcast,
    redis_channel,
    redis_publish,
    socket_dir,
)

logger = logging.getLogger(__name__)

QUEUE = "queue"
# Topics whose waiters are woken one at a time (see the module docstring).
RELAYED_TOPICS = frozenset({QUEUE})

_UNKNOWN = object()
_recheckers: dict[str, Callable[[], Hashable]] = {}
_news_listeners: dict[str, list[Callable[[], None]]] = {}
# One hub per event loop: uvicorn runs one loop per process; `manage.py runserver` (WSGI) runs
# each async view in a loop of its own.
_hubs: dict[asyncio.AbstractEventLoop, _Hub] = {}
_hubs_lock = threading.Lock()


def topic_for_prompt(prompt_id: object) -> str:
    return f"prompt:{prompt_id}"


def notify(topic: str) -> None:
    """Wake the waiters of `topic` in this process and in every other one. Never raises."""
    with _hubs_lock:
        hubs = list(_hubs.values())
    for hub in hubs:
        if hub.listeners.get(topic):  # one registering later reads the state after this change
            hub.wake_threadsafe(topic)
    try:
        if settings.REDIS_URL:
            redis_publish(topic)
        else:
            datagram_broadcast(topic, own={hub.socket_path for hub in hubs})
    except Exception:  # a lost wake-up only delays a waiter until the re-check
        logger.warning("wake-up %s not sent to other processes", topic, exc_info=True)


def on_news_from_elsewhere(topic: str, callback: Callable[[], None]) -> None:
    """Call `callback()` (in the event loop's thread; keep it tiny) when news of `topic`
    arrives from another process or from the periodic re-check, before waiters wake."""
    _news_listeners.setdefault(topic, []).append(callback)


def notify_on_commit(topic: str) -> None:
    """Notify once the current transaction commits (at once outside a transaction)."""
    transaction.on_commit(partial(notify, topic))


def set_recheck(topic: str, fingerprint: Callable[[], Hashable]) -> None:
    """Register a cheap synchronous reading of `topic`'s state for the periodic re-check."""
    _recheckers[topic] = fingerprint


async def wait(topic: str, timeout: float) -> bool:
    """Wait until `topic` is notified (True) or `timeout` seconds pass (False)."""
    async with listening(topic) as listener:
        return await listener.wait(timeout)


@contextlib.asynccontextmanager
async def listening(topic: str) -> AsyncIterator[Listener]:
    """Listen to `topic` from now on: enter before reading the state you wait to change."""
    listener = _running_hub().add(topic)
    try:
        yield listener
    finally:
        listener.close()


class Listener:
    """One waiting request. `wait` returns True once per wake-up received."""

    def __init__(self, hub: _Hub, topic: str) -> None:
        self.hub = hub
        self.topic = topic
        self.event = asyncio.Event()
        self.holding = False  # woken by a relay and not yet passed it on

    @property
    def pending(self) -> bool:
        """A wake-up arrived that `wait` has not returned yet."""
        return self.event.is_set()

    async def wait(self, timeout: float) -> bool:
        if not self.event.is_set():
            try:
                await asyncio.wait_for(self.event.wait(), max(timeout, 0))
            except TimeoutError:
                return False
        self.event.clear()
        return True

    def done(self, *, pass_on: bool) -> None:
        """After acting on a relayed wake-up: wake the next waiter if others may find work."""
        if self.holding:
            self.holding = False
            self.hub.relay_done(self.topic, pass_on=pass_on)

    def close(self) -> None:
        self.hub.remove(self)
        # Leaving with the relay in hand (a job taken, time up, client gone): pass it on.
        self.done(pass_on=True)


class _Hub:
    """The waiters of one event loop, and the ways notifications reach them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # Per topic, in the order they came (a dict: ordered, and O(1) to leave).
        self.listeners: dict[str, dict[Listener, None]] = {}
        self.rounds: dict[str, deque[Listener]] = {}
        self.socket: socket.socket | None = None
        self.socket_path: str | None = None
        self.tasks: list[asyncio.Task] = []
        self.fingerprints: dict[str, Hashable] = {}

    def start(self) -> None:
        if settings.REDIS_URL:
            self.tasks.append(self.loop.create_task(self._redis_subscriber()))
        else:
            try:
                self._bind_datagram_socket()
            except OSError:  # waiters still get this process's wake-ups and the re-check
                logger.warning("wake-ups: no socket for other processes' wake-ups", exc_info=True)
        self.tasks.append(self.loop.create_task(self._recheck_loop()))

    def add(self, topic: str) -> Listener:
        listener = Listener(self, topic)
        self.listeners.setdefault(topic, {})[listener] = None
        return listener

    def remove(self, listener: Listener) -> None:
        waiting = self.listeners.get(listener.topic, {})
        waiting.pop(listener, None)
        if not waiting:
            self.listeners.pop(listener.topic, None)

    def wake_threadsafe(self, topic: str) -> None:
        if self.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            self.loop.call_soon_threadsafe(self.wake, topic)

    def wake(self, topic: str) -> None:
        waiting = self.listeners.get(topic, {})
        if topic not in RELAYED_TOPICS:
            for listener in waiting:
                listener.event.set()
            return
        # A waiter busy with an earlier wake-up may have read the queue before this change:
        # it tries again. Then a new round: the others, oldest first.
        for listener in waiting:
            if listener.holding:
                listener.event.set()
        self.rounds[topic] = deque(w for w in waiting if not w.holding and not w.pending)
        self._wake_next(topic)

    def wake_everyone(self) -> None:
        """Every waiter of every topic looks again (the process is stopping)."""
        for waiting in self.listeners.values():
            for listener in waiting:
                listener.event.set()

    def wake_from_elsewhere(self, topic: str) -> None:
        """News from another process, or a change the re-check found: this process did not
        see it happen, so its own listeners (`on_news_from_elsewhere`) hear of it first."""
        for callback in _news_listeners.get(topic, ()):
            callback()
        self.wake(topic)

    def relay_done(self, topic: str, *, pass_on: bool) -> None:
        if pass_on:
            self._wake_next(topic)
        else:  # nothing left to serve: the rest of this round would find nothing either
            self.rounds.pop(topic, None)

    def _wake_next(self, topic: str) -> None:
        round_ = self.rounds.get(topic)
        current = self.listeners.get(topic, {})
        while round_:
            listener = round_.popleft()
            if listener in current and not listener.holding:
                listener.holding = True
                listener.event.set()
                return

    # --- across processes -------------------------------------------------------------------

    def _bind_datagram_socket(self) -> None:
        path = socket_dir() / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.sock"  # one per hub
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(str(path))
        self.socket, self.socket_path = sock, str(path)
        # Removed at exit; one left by a killed process is removed by the next sender.
        atexit.register(_unlink, str(path))
        self.loop.add_reader(sock.fileno(), self._read_datagrams)

    def _read_datagrams(self) -> None:
        assert self.socket is not None
        while True:
            try:
                data = self.socket.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            self.wake_from_elsewhere(data.decode("utf-8", "replace"))

    async def _redis_subscriber(self) -> None:
        import redis.asyncio as aioredis

        while True:
            client = aioredis.Redis.from_url(settings.REDIS_URL)
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(redis_channel())
                    # (Re)subscribed: anything may have been missed meanwhile.
                    self.fingerprints = dict.fromkeys(self.fingerprints, _UNKNOWN)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            sender, _, topic = message["data"].decode().partition(" ")
                            if sender != SENDER:
                                self.wake_from_elsewhere(topic)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("wake-ups: Redis subscription lost; retrying", exc_info=True)
                await asyncio.sleep(1)
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _recheck_loop(self) -> None:
        interval = settings.KOBOLDCLUSTER["WAKEUP_RECHECK_SECONDS"]
        while True:
            await asyncio.sleep(interval)
            for topic, fingerprint in list(_recheckers.items()):
                if not self.listeners.get(topic):
                    self.fingerprints.pop(topic, None)
                    continue
                try:
                    # On the sync thread, with its persistent connection: opening one per
                    # re-check cost more than all the waiting pops together.
                    value = await sync_to_async(_read_and_release)(fingerprint)
                except Exception:
                    logger.warning("wake-ups: re-check of %s failed", topic, exc_info=True)
                    continue
                if self.fingerprints.get(topic, value) != value:
                    self.wake_from_elsewhere(topic)
                self.fingerprints[topic] = value

    def close(self) -> None:
        for task in self.tasks:
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                task.cancel()
        if self.socket is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.socket.fileno())
            self.socket.close()
            _unlink(self.socket_path or "")


def wake_everyone() -> None:
    """Wake every waiter of the running loop, whatever it waits for: each sees
    `koboldcluster.shutdown.is_stopping()` and answers."""
    _running_hub().wake_everyone()


def _running_hub() -> _Hub:
    """The hub of the running event loop, made on first use; hubs of closed loops go."""
    loop = asyncio.get_running_loop()
    with _hubs_lock:
        for closed in [other for other in _hubs if other.is_closed()]:
            _hubs.pop(closed).close()
        if loop not in _hubs:
            _hubs[loop] = _Hub(loop)
            _hubs[loop].start()
        return _hubs[loop]


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _read_and_release(fingerprint: Callable[[], Hashable]) -> Hashable:
    try:
        return fingerprint()
    finally:
        release_connections()


def release_connections() -> None:
    """After database work outside a request (a re-check, a waiting pop's try): give the
    connections back as a request's end does: a persistent one stays open for the next
    request, an old or broken one is closed (not inside a test's transaction)."""
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
