"""A web process that is told to stop answers what it holds before it goes.

On SIGTERM (and SIGINT, Ctrl-C) uvicorn stops accepting connections and waits for the
requests in progress to finish, up to `timeout_graceful_shutdown` (WEB_KILL_TIMEOUT,
koboldcluster/serve.py), then cancels what is left: cut without an answer. Here that would be
most of them: long-poll pops held for up to 30 s and streams that last minutes. So each
signal first calls `begin` on the event loop: it sets `stopping`, which answers every held
pop with its ordinary answer (as if its wait had ended) and ends every open stream and waiting
front-end request with a clear error (`ServerStopping`); uvicorn's own shutdown then finds
them answered. uvicorn sets its handlers (`signal.signal`) before it imports the application,
in the worker's running event loop; `chain_signal_handlers`, called when the application is
imported, puts `begin` in front of them. If it finds none (the application imported some
other way), nothing is chained and shutdown cuts requests as before; the SIGTERM end-to-end
test (koboldcluster/tests/test_shutdown_e2e.py) notices.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from functools import partial
from types import FrameType

from koboldcluster import wakeups
from koboldcluster.errors import ApiError

logger = logging.getLogger(__name__)


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


def chain_signal_handlers(loop: asyncio.AbstractEventLoop) -> bool:
    """Put `begin`, on `loop`, in front of the process's handlers of SIGTERM and SIGINT
    (uvicorn's); whether there were such handlers."""
    chained = False
    for signum in (signal.SIGTERM, signal.SIGINT):
        then = signal.getsignal(signum)
        if callable(then):
            signal.signal(signum, partial(_on_signal, loop, then))
            chained = True
    return chained


def _on_signal(
    loop: asyncio.AbstractEventLoop, then: Callable, signum: int, frame: FrameType | None
) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(begin)  # a signal handler runs between any two bytecodes
    then(signum, frame)


def begin() -> None:
    """Answer what this process holds: called on the event loop when it is told to stop."""
    current = state()
    if current.stopping.is_set():
        return  # another signal of the same stop (systemd and Ctrl-C signal the whole group)
    logger.info("stopping: answering the requests it holds first")
    current.stopping.set()
    wakeups.wake_everyone()
