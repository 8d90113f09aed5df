"""Serving one's own requests earns nothing (issue 23, point 5).

A job moves kudos from its requester to its server's owner. A server serving its owner's
prompts, or prompts sent from the server's own (public) address, would make priority out
of nothing: queue anonymously or under a second account, serve, submit padding. Such a job
moves no kudos either way; its tokens are still counted as used and contributed.
"""

from __future__ import annotations

import pytest
from django.db.models import Sum

from accounts.models import LedgerEntry

pytestmark = pytest.mark.django_db

HOME = "81.2.69.142"  # a public address: one household (TEST-NET ranges are not global)
ELSEWHERE = "93.184.216.34"
LAN = "192.168.1.20"  # a private one: maybe a whole LAN, or a proxy nobody declared


def serve(api, bob, *, prompt_from: str, server_from: str, **prompt_fields) -> dict:
    """A prompt sent from `prompt_from`, served and submitted by bob's server from
    `server_from`: the kudos and tokens of its ledger pair, by kind."""
    body = {"prompt": "Once", "params": {"n": 1, "max_length": 16}, **prompt_fields}
    headers = {"HTTP_APIKEY": prompt_fields.pop("apikey")} if "apikey" in prompt_fields else {}
    body.pop("apikey", None)
    created = api.post("/generate/prompt", body, format="json", REMOTE_ADDR=prompt_from, **headers)
    assert created.status_code == 200, created.json()
    pop = {"username": "bob", "password": "s3rver-pass", "name": "bob-1", "model": "m"}
    job = api.post("/generate/pop", pop, format="json", REMOTE_ADDR=server_from).json()
    assert job["id"], job
    submit = {"id": job["id"], "password": "s3rver-pass", "generation": "x" * 40}
    done = api.post("/generate/submit", submit, format="json", REMOTE_ADDR=server_from)
    assert done.status_code == 200, done.json()
    entries = LedgerEntry.objects.filter(job_id=job["id"])
    return {
        e["kind"]: (e["kudos"], e["tokens"])
        for e in entries.values("kind").annotate(kudos=Sum("kudos"), tokens=Sum("tokens"))
    }


def test_a_stranger_s_request_pays_the_server_s_owner(api, bob):
    paid = serve(api, bob, prompt_from=ELSEWHERE, server_from=HOME)
    assert paid == {"usage": (-10, 10), "contribution": (10, 10)}


def test_an_anonymous_request_from_the_server_s_address_moves_no_kudos(api, bob):
    paid = serve(api, bob, prompt_from=HOME, server_from=HOME)
    assert paid == {"usage": (0, 10), "contribution": (0, 10)}


def test_a_second_account_at_the_server_s_address_earns_its_owner_nothing(api, bob, register):
    _, key = register("bobs-sock")
    paid = serve(api, bob, prompt_from=HOME, server_from=HOME, apikey=key)
    assert paid == {"usage": (0, 10), "contribution": (0, 10)}


def test_the_owner_s_own_request_moves_no_kudos_from_anywhere(api, bob):
    paid = serve(api, bob, prompt_from=ELSEWHERE, server_from=HOME, username="bob",
                 password="s3rver-pass")  # fmt: skip
    assert paid == {"usage": (0, 10), "contribution": (0, 10)}


def test_a_private_address_is_not_one_party(api, bob):
    """A LAN, or every client behind an undeclared proxy, shares it: jobs pay as usual."""
    paid = serve(api, bob, prompt_from=LAN, server_from=LAN)
    assert paid == {"usage": (-10, 10), "contribution": (10, 10)}
