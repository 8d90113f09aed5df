"""Long-poll pops (`wait`): held until work arrives, then answered exactly like a pop.

The waiting pops run through the cluster's ASGI application in this process (what ./run.sh
serves; httpx speaks ASGI to it) while a prompt is created from another thread, as a
client's request would be; one takes the suite's test client from another thread. Timing
bounds are generous (a loaded machine); the real figures are `manage.py benchmark_dispatch`'s.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from accounts.models import User
from conftest import SERVER_PASSWORD
from generations.intake import GenerationRequest, prompt_create
from generations.models import Job
from koboldcluster import metrics
from koboldcluster.asgi import application
from koboldcluster.asgi_client import APIClient

pytestmark = pytest.mark.django_db(transaction=True)

# A wake-up must reach a waiting pop well within this (measured: a few milliseconds).
DISPATCH_BOUND = 2.0


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run `main` in a new event loop; close the connections its sync parts opened."""

    async def wrapped() -> Any:
        try:
            return await main()
        finally:
            await sync_to_async(connections.close_all)()

    return asyncio.run(wrapped())


def pop_body(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "username": "bob",
        "password": SERVER_PASSWORD,
        "name": name,
        "model": "tiny-llm",
        "max_length": 80,
        "max_content_length": 2048,
        **fields,
    }


async def timed_pop(
    name: str,
    path: str = "/generate/pop",
    headers: dict | None = None,
    **fields: Any,
) -> tuple[float, int, dict]:
    """POST a pop; return when it was answered (monotonic), its status and its body."""
    body = pop_body(name, **fields) if path == "/generate/pop" else {"name": name, **fields}
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://cluster") as client:
        answer = await client.post(path, json=body, headers=headers or {}, timeout=60)
    return time.monotonic(), answer.status_code, answer.json()


def _create(user: User, **shape: Any) -> object:
    try:
        request = GenerationRequest(
            **{"text": "Once upon a time", "n": 1, "max_length": 16, "max_context_length": 512}
            | shape
        )
        return prompt_create(user=user, request=request).id
    finally:
        connections.close_all()


async def create_prompt(user: User, **shape: Any) -> tuple[float, object]:
    """Create a prompt in another thread, as a client's request would; when and its id."""
    prompt_id = await sync_to_async(_create, thread_sensitive=False)(user, **shape)
    return time.monotonic(), prompt_id


@pytest.fixture
def bob_and_alice(db: None) -> tuple[User, User]:
    bob = User.objects.create_user("bob", password=SERVER_PASSWORD)
    alice = User.objects.create(username="alice", kind=User.Kind.UNCLAIMED)
    return bob, alice


def test_a_waiting_pop_gets_a_new_prompt_at_once(bob_and_alice):
    _, alice = bob_and_alice

    async def main() -> tuple:
        waiting = asyncio.create_task(timed_pop("bob-1", wait=20))
        await asyncio.sleep(0.5)  # the pop has found nothing and waits
        assert not waiting.done()
        created, prompt_id = await create_prompt(alice)
        answered, status, body = await waiting
        return answered - created, status, body, prompt_id

    delay, status, body, prompt_id = run(main)
    assert status == 200, body
    assert body["id"] is not None and body["payload"]["prompt"] == "Once upon a time"
    assert Job.objects.get(id=body["id"]).prompt_id == prompt_id
    assert delay < DISPATCH_BOUND


def woken_pop(requester: User, *args: Any, **fields: Any) -> tuple[float, int, dict]:
    """A pop that waits (20 s at most) while `requester` posts a prompt: how long after the
    prompt it was answered, its status and its body."""

    async def main() -> tuple:
        waiting = asyncio.create_task(timed_pop(*args, wait=20, **fields))
        await asyncio.sleep(0.5)  # the pop has found nothing and waits
        assert not waiting.done()
        created, _ = await create_prompt(requester)
        answered, status, body = await waiting
        return answered - created, status, body

    return run(main)


def test_the_v2_pop_waits_too(register, bob_and_alice):
    _, key = register("carol")
    v2 = {"models": ["tiny-llm"], "max_length": 80, "max_context_length": 2048}

    path = "/api/v2/generate/text/pop"
    delay, status, body = woken_pop(bob_and_alice[1], "carol-1", path, {"apikey": key}, **v2)

    assert status == 200, body
    assert body["id"] is not None and body["ids"] == [body["id"]]
    assert delay < DISPATCH_BOUND


def test_one_prompt_two_waiting_servers_exactly_one_gets_it(bob_and_alice):
    _, alice = bob_and_alice

    async def main() -> list:
        started = time.monotonic()
        pops = [asyncio.create_task(timed_pop(f"bob-{i}", wait=3)) for i in (1, 2)]
        await asyncio.sleep(0.5)
        await create_prompt(alice)
        return [(answered - started, body) for answered, _, body in await asyncio.gather(*pops)]

    answers = run(main)
    got = [body for _, body in answers if body["id"]]
    empty = [(after, body) for after, body in answers if not body["id"]]
    assert len(got) == 1 and len(empty) == 1
    # The other kept waiting for its whole 3 s, then answered like an empty pop.
    after, body = empty[0]
    assert after >= 2.9
    assert body == {"id": None, "skipped": {"model": 0, "max_content_length": 0, "max_length": 0}}
    assert Job.objects.count() == 1


def test_a_server_whose_limits_do_not_fit_keeps_waiting(bob_and_alice):
    _, alice = bob_and_alice

    async def main() -> tuple:
        started = time.monotonic()
        waiting = asyncio.create_task(timed_pop("bob-1", wait=2, max_length=80))
        await asyncio.sleep(0.3)
        await create_prompt(alice, max_length=200)  # more than the server generates
        answered, status, body = await waiting
        return answered - started, body

    after, body = run(main)
    assert after >= 1.9
    assert body == {"id": None, "skipped": {"model": 0, "max_content_length": 0, "max_length": 1}}
    assert not Job.objects.exists()


def test_a_fitting_server_gets_the_prompt_past_one_that_does_not_fit(bob_and_alice):
    """The wake-up goes to the oldest waiter first; one that cannot serve passes it on."""
    _, alice = bob_and_alice

    async def main() -> list:
        small = asyncio.create_task(timed_pop("bob-small", wait=3, max_length=20))
        await asyncio.sleep(0.3)
        large = asyncio.create_task(timed_pop("bob-large", wait=20, max_length=500))
        await asyncio.sleep(0.3)
        created, _ = await create_prompt(alice, max_length=200)
        answered, _, body = await large
        await small
        return answered - created, body

    delay, body = run(main)
    assert body["id"] is not None
    assert delay < DISPATCH_BOUND


def test_without_wait_a_pop_answers_at_once(bob_and_alice):
    async def main() -> tuple:
        started = time.monotonic()
        answered, status, body = await timed_pop("bob-1")
        return answered - started, body

    after, body = run(main)
    assert body["id"] is None
    assert after < DISPATCH_BOUND


@pytest.mark.parametrize("wait", [-1, 30.5, 31, "5", True, None, [1]])
def test_wait_must_be_a_number_of_seconds_from_0_to_30(pop, bob, wait):
    response = pop(wait=wait)
    assert response.status_code == 400
    assert response.json()["rc"] == "ValidationError"
    assert "wait" in response.json()["message"]


@pytest.mark.parametrize("wait", [0, 0.5, 30])
def test_wait_takes_whole_and_fractional_seconds(pop, bob, submit_prompt, wait):
    submit_prompt()  # work is there: the pop answers at once whatever it may wait
    response = pop(wait=wait)
    assert response.status_code == 200, response.json()
    assert response.json()["id"] is not None


def test_the_v2_pop_refuses_a_bad_wait(api, register):
    _, key = register("carol")
    body = {"name": "carol-1", "models": ["tiny-llm"], "wait": 60}
    response = api.post("/api/v2/generate/text/pop", body, format="json", HTTP_APIKEY=key)
    assert response.status_code == 400
    assert "wait" in response.json()["message"]


def test_a_waiting_pop_from_the_test_client_is_woken_too(bob_and_alice):
    """The suite's test client (koboldcluster.asgi_client) runs each request in an event loop
    of its own, its synchronous steps on the calling thread."""
    _, alice = bob_and_alice
    answer: dict[str, Any] = {}

    def waiting_pop() -> None:
        try:
            response = APIClient().post("/generate/pop", pop_body("bob-1", wait=20), format="json")
            answer["at"], answer["body"] = time.monotonic(), response.json()
        finally:
            connections.close_all()

    popper = threading.Thread(target=waiting_pop)
    popper.start()
    time.sleep(0.5)
    assert popper.is_alive()
    created = time.monotonic()
    _create(alice)
    popper.join(timeout=30)
    assert answer["body"]["id"] is not None
    assert answer["at"] - created < DISPATCH_BOUND


def test_a_slot_given_back_wakes_a_waiting_pop(bob_and_alice, pop, submit_generation):
    _, alice = bob_and_alice
    _create(alice)
    taken = pop("bob-1").json()
    assert taken["id"] is not None

    def give_back() -> None:
        try:
            response = submit_generation(taken["id"], "", state="faulted")
            assert response.status_code == 200, response.json()
        finally:
            connections.close_all()

    async def main() -> tuple:
        waiting = asyncio.create_task(timed_pop("bob-2", wait=20))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await sync_to_async(give_back, thread_sensitive=False)()
        returned = time.monotonic()
        answered, _, body = await waiting
        return answered - returned, body

    delay, body = run(main)
    assert body["id"] is not None and body["id"] != taken["id"]
    assert delay < DISPATCH_BOUND


def test_a_waiting_pop_counts_once_against_the_rate_limit(bob_and_alice, rate_limits):
    """Its tries after a wake-up are not requests: authentication and limits ran once."""
    _, alice = bob_and_alice
    rate_limits(worker_ip="2/min", worker_account="2/min")

    async def main() -> list[int]:
        waiting = asyncio.create_task(timed_pop("bob-1", wait=2))
        for _ in range(3):  # wake it three times with prompts it cannot serve
            await asyncio.sleep(0.3)
            await create_prompt(alice, max_length=200)
        _, first, body = await waiting
        assert body["skipped"]["max_length"] == 3
        _, second, _ = await timed_pop("bob-1")
        _, third, _ = await timed_pop("bob-1")
        return [first, second, third]

    assert run(main) == [200, 200, 429]


@pytest.mark.parametrize("last_message_apart", [False, True])
def test_a_pop_whose_client_leaves_stops_waiting_and_claims_nothing(
    bob_and_alice, last_message_apart
):
    _, alice = bob_and_alice
    body = json.dumps(pop_body("bob-1", wait=20)).encode()
    sent: list[dict] = []

    async def main() -> float:
        left = asyncio.Event()

        async def receive() -> dict:
            if body_messages:
                return body_messages.pop()
            await asyncio.sleep(0.5)  # the pop has found nothing and waits; the client leaves
            left.set()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        body_messages = [{"type": "http.request", "body": body, "more_body": False}]
        # As a server may send a body (granian did): its bytes, then an empty last message.
        if last_message_apart:
            body_messages = [
                {"type": "http.request", "body": b"", "more_body": False},
                {"type": "http.request", "body": body, "more_body": True},
            ]
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "path": "/generate/pop", "raw_path": b"/generate/pop",
            "query_string": b"", "root_path": "", "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 5001),
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode())],
        }  # fmt: skip
        waiters = metrics.LONG_POLL_WAITERS._value.get()
        held = asyncio.create_task(application(scope, receive, send))
        await asyncio.wait_for(left.wait(), 10)  # the client leaves once the pop waits
        await asyncio.wait_for(held, 5)  # the request ends with the client
        assert metrics.LONG_POLL_WAITERS._value.get() == waiters
        await create_prompt(alice)
        await asyncio.sleep(0.3)
        return waiters

    run(main)
    # Nobody reads it, but the pop is answered as it stands (its ordinary empty answer), so
    # that the server logs it answered rather than as a 500 (a server's "no response").
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert json.loads(sent[1]["body"])["id"] is None
    assert not Job.objects.exists()  # the prompt waits for a server that is still there


def test_a_held_pop_is_timed_with_its_wait_and_counted_while_it_waits(bob_and_alice):
    def observed() -> tuple[float, float]:
        def value(name: str) -> float:
            found = metrics.registry().get_sample_value(name, {"api": "original"})
            return found or 0.0

        return value("horde_pop_duration_seconds_count"), value("horde_pop_duration_seconds_sum")

    async def main() -> float:
        waiting = asyncio.create_task(timed_pop("bob-1", wait=2))
        during = metrics.LONG_POLL_WAITERS._value.get()
        while during == waiters and not waiting.done():  # until the pop waits
            await asyncio.sleep(0.02)
            during = metrics.LONG_POLL_WAITERS._value.get()
        await waiting
        return during

    before = observed()
    waiters = metrics.LONG_POLL_WAITERS._value.get()
    during = run(main)
    count, total = observed()
    assert during == waiters + 1
    assert metrics.LONG_POLL_WAITERS._value.get() == waiters
    assert count == before[0] + 1
    assert total - before[1] >= 1.9  # the wait is in the pop's time
