"""How the drain on SIGTERM goes in front of uvicorn's signal handlers
(koboldcluster/shutdown.py): uvicorn sets them with `signal.signal` before it imports the
application, which then chains `shutdown.begin` in front of them, on its event loop. The
drain itself is tested end to end (test_shutdown_e2e.py)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from koboldcluster import shutdown


@pytest.fixture
def stop_handlers():
    """uvicorn's part, played by a recorder: the handlers it sets, restored afterwards."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    received: list[int] = []
    for signum in saved:
        signal.signal(signum, lambda signum, frame: received.append(signum))
    yield received
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    shutdown._state = None  # the process's state: fresh for the next test


def test_a_stop_signal_begins_the_drain_on_the_loop_then_reaches_the_servers_handler(
    stop_handlers,
):
    loop = asyncio.new_event_loop()
    try:
        assert shutdown.chain_signal_handlers(loop)
        assert not shutdown.is_stopping()

        signal.raise_signal(signal.SIGTERM)
        assert stop_handlers == [signal.SIGTERM]  # uvicorn's handler ran at once
        assert not shutdown.is_stopping()  # the drain waits for the loop
        loop.run_until_complete(asyncio.sleep(0))
        assert shutdown.is_stopping()

        signal.raise_signal(signal.SIGINT)  # a second signal of the same stop
        loop.run_until_complete(asyncio.sleep(0))
        assert stop_handlers == [signal.SIGTERM, signal.SIGINT]
    finally:
        loop.close()


def test_nothing_is_chained_where_no_handler_is_set():
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    loop = asyncio.new_event_loop()
    try:
        assert not shutdown.chain_signal_handlers(loop)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        loop.close()
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGINT, saved[1])
