"""How the drain on SIGTERM finds granian's signal handlers (koboldcluster/shutdown.py): noted
on the loop when the application is imported, before granian sets them, on asyncio's loop and
uvloop's alike; the drain is then put in front of them. The drain itself is tested end to end
(test_shutdown_e2e.py)."""

from __future__ import annotations

import asyncio
import signal

import pytest
import uvloop

from koboldcluster import shutdown

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def granians_handler(signum, frame):  # what granian gives the loop (granian/_signals.py)
    raise AssertionError("not called here")


@pytest.fixture(params=sorted(LOOPS))
def loop(request):
    loop = LOOPS[request.param]()
    yield loop
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
    loop.close()


def test_the_drain_goes_in_front_of_the_handlers_given_after_the_watch(loop):
    shutdown.watch_signal_handlers(loop)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, granians_handler, signum, None)
    loop.add_signal_handler(signal.SIGUSR1, granians_handler)  # not a stop signal: not noted

    assert shutdown.install(loop)
    assert shutdown._stop_handlers(loop) == {
        signal.SIGTERM: (granians_handler, (signal.SIGTERM, None)),
        signal.SIGINT: (granians_handler, (signal.SIGINT, None)),
    }  # the drain's own handler is not noted in their place
    loop.remove_signal_handler(signal.SIGUSR1)


def test_without_the_watch_only_asyncios_own_table_can_be_read(loop):
    loop.add_signal_handler(signal.SIGTERM, granians_handler, signal.SIGTERM, None)

    if isinstance(loop, uvloop.Loop):
        assert shutdown._stop_handlers(loop) is None
        assert not shutdown.install(loop)
    else:
        assert shutdown._stop_handlers(loop) == {
            signal.SIGTERM: (granians_handler, (signal.SIGTERM, None))
        }
        assert shutdown.install(loop)
