"""One queue, one ledger: the original API and the AI Horde v2 API serve each other."""

from __future__ import annotations

import pytest

from accounts.models import LedgerEntry
from accounts.selectors import totals_for
from conftest import SERVER_PASSWORD
from generations.models import Prompt

pytestmark = pytest.mark.django_db


def test_a_v2_request_served_through_the_original_protocol(api, register, bob, pop):
    carol, key = register("carol")
    body = {"prompt": "Hi", "params": {"max_length": 16, "temperature": 0.7}}
    prompt_id = api.post(
        "/api/v2/generate/text/async", body, format="json", HTTP_APIKEY=key
    ).json()["id"]

    job = pop().json()
    reward = api.post(
        "/generate/submit",
        {"id": job["id"], "password": SERVER_PASSWORD, "generation": "x" * 12},
        format="json",
    ).json()
    v2 = api.get(f"/api/v2/generate/text/status/{prompt_id}").json()
    original = api.get(f"/generate/prompt/{prompt_id}").json()

    assert job["payload"]["prompt"] == "Hi" and job["payload"]["temperature"] == 0.7
    assert job["payload"]["max_context_length"] == 2048
    assert reward == {"reward": 3}
    assert (
        v2["generations"][0]["text"] == "x" * 12 and v2["generations"][0]["worker_name"] == "bob-1"
    )
    assert original["generations"] == ["x" * 12] and original["done"] is True
    assert_ledger_balances(requester=carol, owner=bob, tokens=3)


def test_an_original_request_served_through_the_v2_protocol(api, register, alice, submit_prompt):
    dave, key = register("dave")
    prompt_id = submit_prompt(username="alice", params={"max_length": 10, "top_k": 40})

    popped = api.post(
        "/api/v2/generate/text/pop",
        {"name": "dave-1", "models": ["any-model"]},
        format="json",
        HTTP_APIKEY=key,
    ).json()
    reward = api.post(
        "/api/v2/generate/text/submit",
        {"id": popped["id"], "generation": "y" * 100},
        format="json",
        HTTP_APIKEY=key,
    ).json()
    original = api.get(f"/generate/prompt/{prompt_id}").json()

    # horde-sdk workers need max_length >= 16: the payload asks that, the reward stays within 10.
    assert popped["payload"]["max_length"] == 16 and popped["payload"]["top_k"] == 40
    assert reward == {"reward": 10.0}
    assert original["generations"] == ["y" * 100]
    assert Prompt.objects.get(id=prompt_id).max_length == 10
    assert_ledger_balances(requester=alice, owner=dave, tokens=10)
    assert api.get("/usage").json() == {"alice": 10}
    assert api.get("/contributions").json() == {"dave": 10}


def test_servers_and_workers_list_the_same_servers(api, register, pop):
    _, key = register("dave")
    pop()
    api.post(
        "/api/v2/generate/text/pop",
        {"name": "dave-1", "models": ["m"]},
        format="json",
        HTTP_APIKEY=key,
    )

    servers = {(s["id"], s["name"]) for s in api.get("/servers").json()}
    workers = {(w["id"], w["name"]) for w in api.get("/api/v2/workers").json()}

    assert servers == workers and len(servers) == 2


def assert_ledger_balances(*, requester, owner, tokens: int) -> None:
    entries = LedgerEntry.objects.values_list("kind", "user_id", "tokens", "kudos")
    assert sorted(entries) == [
        ("contribution", owner.pk, tokens, tokens),
        ("usage", requester.pk, tokens, -tokens),
    ]
    assert totals_for(requester).kudos + totals_for(owner).kudos == 0
