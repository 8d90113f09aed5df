"""Wake-ups within one process and through the datagram sockets between processes."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from typing import Any

import pytest

from koboldcluster import wakeup_senders, wakeups


@pytest.fixture(autouse=True)
def no_redis(settings: Any) -> None:
    settings.REDIS_URL = ""


def test_a_notify_from_another_thread_wakes_a_waiter():
    async def main() -> tuple[bool, bool]:
        async with wakeups.listening("prompt:a") as listener:
            threading.Timer(0.1, wakeups.notify, args=("prompt:a",)).start()
            woken = await listener.wait(5)
            again = await listener.wait(0.2)  # one wake-up, one return
        return woken, again

    assert asyncio.run(main()) == (True, False)


def test_wait_returns_false_when_nothing_comes():
    assert asyncio.run(wakeups.wait("prompt:b", 0.1)) is False


def test_a_prompt_topic_wakes_all_its_waiters_and_no_other_topic():
    async def main() -> list[bool]:
        waiters = [asyncio.create_task(wakeups.wait("prompt:c", 2)) for _ in range(3)]
        other = asyncio.create_task(wakeups.wait("prompt:d", 0.5))
        await asyncio.sleep(0.05)
        wakeups.notify("prompt:c")
        return [*await asyncio.gather(*waiters), await other]

    assert asyncio.run(main()) == [True, True, True, False]


def test_the_queue_wakes_its_waiters_one_at_a_time_oldest_first():
    async def main() -> list[list[bool]]:
        states = []
        async with (
            wakeups.listening(wakeups.QUEUE) as first,
            wakeups.listening(wakeups.QUEUE) as second,
            wakeups.listening(wakeups.QUEUE) as third,
        ):
            everyone = (first, second, third)
            wakeups.notify(wakeups.QUEUE)
            await asyncio.sleep(0.05)
            states.append([w.pending for w in everyone])
            await first.wait(0)
            first.done(pass_on=True)  # it took a job: the next one may find more
            states.append([w.pending for w in everyone])
            await second.wait(0)
            second.done(pass_on=False)  # the queue was empty: nobody else is woken
            states.append([w.pending for w in everyone])
        return states

    assert asyncio.run(main()) == [
        [True, False, False],
        [False, True, False],
        [False, False, False],
    ]


def test_a_waiter_leaving_with_the_wake_up_passes_it_on():
    async def main() -> tuple[bool, bool]:
        leaving = wakeups._running_hub().add(wakeups.QUEUE)  # the oldest waiter
        async with wakeups.listening(wakeups.QUEUE) as staying:
            wakeups.notify(wakeups.QUEUE)
            await asyncio.sleep(0.05)
            woken_first = leaving.pending and not staying.pending
            leaving.close()  # it leaves (a job, time up, client gone) without saying
            return woken_first, staying.pending

    assert asyncio.run(main()) == (True, True)


def test_a_waiter_mid_try_is_told_to_try_again():
    async def main() -> bool:
        async with wakeups.listening(wakeups.QUEUE) as busy:
            wakeups.notify(wakeups.QUEUE)
            await busy.wait(1)  # woken: now reading the queue, holding the relay
            wakeups.notify(wakeups.QUEUE)  # the queue changed meanwhile
            await asyncio.sleep(0.05)
            return busy.pending

    assert asyncio.run(main()) is True


def test_another_process_wakes_a_waiter_through_its_datagram_socket():
    async def main() -> bool:
        async with wakeups.listening("prompt:e") as listener:
            # As another process would: a datagram to every socket in the directory.
            threading.Timer(
                0.1, wakeup_senders.datagram_broadcast, args=("prompt:e", set())
            ).start()
            return await listener.wait(5)

    assert asyncio.run(main()) is True


def test_a_socket_left_by_a_dead_process_is_removed():
    directory = wakeup_senders.socket_dir()
    stale = directory / "1-deadbeef0000.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()  # the file stays, nobody reads it
    wakeups.notify("prompt:f")
    assert not os.path.exists(stale)


def test_a_socket_directory_removed_meanwhile_is_made_again(tmp_path, settings):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "WAKEUP_SOCKET_DIR": str(tmp_path / "w")}
    directory = wakeup_senders.socket_dir()
    directory.rmdir()

    wakeups.notify("prompt:g")  # nobody to tell, and no error

    async def main() -> bool:
        async with wakeups.listening("prompt:h") as listener:  # a new hub binds its socket
            threading.Timer(
                0.1, wakeup_senders.datagram_broadcast, args=("prompt:h", set())
            ).start()
            return await listener.wait(5)

    assert asyncio.run(main()) is True
    assert wakeup_senders.socket_dir().is_dir()
