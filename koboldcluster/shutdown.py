"""A web process that is told to stop answers what it holds before it goes.

granian stops a worker on SIGTERM (and SIGINT, Ctrl-C) by stopping its event loop at once:
every request still on it is cut without an answer. That is most of them here: long-poll pops
held for up to 30 s and streams that last minutes. So the cluster's ASGI handler puts its own
handler in front of granian's (`install`, on the worker's first request): it sets `stopping`,
which answers every held pop with its ordinary answer (as if its wait had ended) and ends
every open stream and waiting front-end request with a clear error (`ServerStopping`), waits
until the process's requests are answered (at most DRAIN_SECONDS, well within granian's
`--workers-kill-timeout`), and then hands over to granian's own handler.

granian gives its handler to the worker's event loop (`loop.add_signal_handler`), and no event
loop has a public way to read it back. So `watch_signal_handlers`, called when the application
is imported (granian builds the worker's loop and makes it the current one first, and sets its
handlers after), notes on the loop what it is given for SIGTERM and SIGINT; `install` reads
that, or asyncio's own table (`loop._signal_handlers`) for a loop the application was imported
before. Either works for asyncio's loop and uvloop's alike. If neither is there, nothing is
installed (a warning says so) and shutdown cuts requests as before; the SIGTERM end-to-end
test (koboldcluster/tests/test_shutdown_e2e.py) notices.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable

from koboldcluster import wakeups
from koboldcluster.errors import ApiError

logger = logging.getLogger(__name__)

# At most this long, so that granian's --workers-kill-timeout (WEB_KILL_TIMEOUT, scripts/web.sh)
# never kills the worker while it is still answering.
DRAIN_SECONDS = max(float(os.environ.get("WEB_KILL_TIMEOUT") or 10) - 2, 1.0)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class ServerStopping(ApiError):
    status_code = 503
    default_rc = "ServerStopping"

    def __init__(self) -> None:
        super().__init__(
            "This web server is restarting or stopping; send the request again.",
            retry_after=1,
        )


class _State:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()


_state: _State | None = None


def state() -> _State:
    global _state
    if _state is None:
        _state = _State()
    return _state


def stopping() -> asyncio.Event:
    """Set once this process was told to stop (never cleared)."""
    return state().stopping


def is_stopping() -> bool:
    return _state is not None and _state.stopping.is_set()


def watch_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
    """Note on `loop` each handler it is given for SIGTERM and SIGINT from now on (granian's,
    set after the application is imported), for `install`."""
    given: dict[int, tuple[Callable, tuple]] = {}
    add = loop.add_signal_handler

    def add_and_note(signum: int, callback: Callable, *args: object) -> None:
        add(signum, callback, *args)
        if signum in _STOP_SIGNALS and callback is not _on_signal:
            given[signum] = (callback, args)

    try:
        loop.add_signal_handler = add_and_note  # type: ignore[method-assign]
        loop._stop_handlers = given  # type: ignore[attr-defined]
    except AttributeError:  # a loop that takes no attributes: `install` tries asyncio's table
        return


def install(loop: asyncio.AbstractEventLoop) -> bool:
    """Put the drain in front of the loop's handlers of SIGTERM and SIGINT (granian's);
    whether it was installed. Nothing is done where the loop has no such handlers."""
    handlers = _stop_handlers(loop)
    if handlers is None:
        logger.warning("cannot read the event loop's signal handlers: no drain on shutdown")
        return False
    for signum, (callback, args) in handlers.items():
        loop.add_signal_handler(signum, _on_signal, loop, callback, args)
    return bool(handlers)


def _stop_handlers(loop: asyncio.AbstractEventLoop) -> dict[int, tuple[Callable, tuple]] | None:
    """The loop's handlers of SIGTERM and SIGINT: noted by `watch_signal_handlers`, or read
    from asyncio's own table; None when neither can be read."""
    noted = getattr(loop, "_stop_handlers", None)
    if noted:
        return dict(noted)
    table = getattr(loop, "_signal_handlers", None)
    if not isinstance(table, dict):
        return None
    return {
        signum: (table[signum]._callback, table[signum]._args)
        for signum in _STOP_SIGNALS
        if signum in table
    }


def _on_signal(loop: asyncio.AbstractEventLoop, then: Callable, args: tuple) -> None:
    current = state()
    if current.stopping.is_set():
        # Another signal of the same stop: the group's SIGTERM, then granian's own to its
        # workers (systemd and Ctrl-C signal the whole group). The drain is bounded anyway.
        return
    logger.info("stopping: answering %s requests in progress first", current.in_flight)
    current.stopping.set()
    wakeups.wake_everyone()
    loop.create_task(_drain_then(then, args))


async def _drain_then(then: Callable, args: tuple) -> None:
    current = state()
    try:
        await asyncio.wait_for(current.idle.wait(), DRAIN_SECONDS)
    except TimeoutError:
        logger.warning("stopping with %s requests still in progress", current.in_flight)
    await asyncio.sleep(0.05)  # let the last answers leave the sockets
    then(*args)


def request_started() -> None:
    current = state()
    current.in_flight += 1
    current.idle.clear()


def request_finished() -> None:
    current = state()
    current.in_flight -= 1
    if current.in_flight <= 0:
        current.idle.set()
