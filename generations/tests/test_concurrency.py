"""Real concurrent connections: a slot goes to exactly one server, a job is paid once.

These run on whichever database the suite runs on (SQLite file and PostgreSQL in CI).
"""

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection

from accounts.models import LedgerEntry, User
from conftest import SERVER_PASSWORD
from generations.models import Job, Prompt
from koboldcluster.asgi_client import APIClient
from koboldcluster.schema_check import documented_response

pytestmark = pytest.mark.django_db(transaction=True)


def run_together(count: int, work: Callable[[int], Any]) -> list[Any]:
    """Run `work(i)` in `count` threads released at the same instant; return the results."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def target(index: int) -> None:
        try:
            # Connect first: connecting takes longer than a pop and would stagger the threads.
            connection.ensure_connection()
            barrier.wait()
            results[index] = work(index)
        except Exception as exc:  # reported by the assertions below
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


def test_40_concurrent_pops_hand_out_exactly_the_30_slots_of_10_prompts(submit_prompt):
    # Trusted: an untrusted account may run only UNTRUSTED_SERVERS_PER_ACCOUNT (20) servers.
    User.objects.create_user("bob", password=SERVER_PASSWORD, trusted=True)
    for i in range(10):
        submit_prompt(f"prompt {i}", params={"n": 3, "max_length": 16})

    def pop(index: int) -> Any:
        body = {
            "username": "bob",
            "password": SERVER_PASSWORD,
            "name": f"server-{index}",
            "model": "tiny-llm",
            "max_length": 80,
            "max_content_length": 2048,
        }
        response = APIClient().post("/generate/pop", body, format="json")
        assert response.status_code == 200, response.content
        return response.json()["id"]

    results = run_together(40, pop)

    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors
    job_ids = [r for r in results if r is not None]
    assert len(job_ids) == len(set(job_ids)) == 30
    assert Job.objects.count() == 30
    assert all(p.waiting == 0 for p in Prompt.objects.all())
    assert (
        sorted(Job.objects.values_list("prompt_id", flat=True)).count(Prompt.objects.first().id)
        == 3
    )


def test_concurrent_duplicate_submits_pay_exactly_once(submit_prompt):
    User.objects.create_user("bob", password=SERVER_PASSWORD)
    submit_prompt(params={"n": 1, "max_length": 16})
    body = {
        "username": "bob",
        "password": SERVER_PASSWORD,
        "name": "bob-1",
        "model": "tiny-llm",
    }
    job_id = APIClient().post("/generate/pop", body, format="json").json()["id"]

    def submit(index: int) -> int:
        response = APIClient().post(
            "/generate/submit",
            {"id": job_id, "password": SERVER_PASSWORD, "generation": f"text number {index}"},
            format="json",
        )
        return response.status_code

    statuses = run_together(12, submit)

    assert sorted(statuses) == [200] + [400] * 11
    assert LedgerEntry.objects.filter(job_id=job_id).count() == 2
    server = Job.objects.get(id=job_id).server
    assert server.requests_fulfilled == 1


@pytest.mark.parametrize("caller", ["anonymous", "account"])
def test_concurrent_retries_with_one_idempotency_key_queue_one_prompt(caller, register):
    """Issue 25: the unique constraint, not luck, keeps simultaneous retries to one prompt."""
    headers = {"HTTP_IDEMPOTENCY_KEY": "same-retry"}
    if caller == "account":
        headers["HTTP_APIKEY"] = register("carol")[1]
    body = {"prompt": "Once upon a time", "params": {"n": 1, "max_length": 16}}
    documented_response("/generate/prompt", "POST", 200)  # the tests' schema, built once

    def create(index: int) -> Any:
        response = APIClient().post("/generate/prompt", body, format="json", **headers)
        assert response.status_code == 200, response.content
        return response.json()["id"]

    results = run_together(8, create)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert len(set(results)) == 1
    assert Prompt.objects.count() == 1
