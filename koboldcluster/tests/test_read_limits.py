"""Reads are limited too, and no account grows the lists every request walks (issue 23, 6).

The faces' information endpoints, the original API's lists, the status page and /metrics
count against a per-address limit (`info`, `read`); `?refresh=N` no longer makes a status
computation of its own; an account has at most MAX_SERVERS_PER_ACCOUNT active servers and at
most HELD_POPS_PER_ACCOUNT pops held per web process.
"""

from __future__ import annotations

import asyncio

import pytest

from conftest import SERVER_PASSWORD
from generations import long_poll
from generations.tests.test_long_poll import run, timed_pop
from servers.models import Server
from stats import pages

pytestmark = pytest.mark.django_db

INFO = [
    "/v1/models",
    "/api/v1/model",
    "/api/v1/config/max_length",
    "/api/v1/config/max_context_length",
    "/api/extra/version",
    "/",
    "/status/live",
    "/readme",
    "/metrics",
]
READ = ["/servers", "/models", "/usage", "/contributions"]


@pytest.mark.parametrize("path", INFO)
def test_the_information_reads_are_limited_per_address(api, rate_limits, path):
    rate_limits(info_ip="3/min")
    answers = [api.get(path).status_code for _ in range(4)]
    assert answers[:3] == [200] * 3 and answers[3] == 429, answers
    assert int(api.get(path)["Retry-After"]) >= 1


@pytest.mark.parametrize("path", READ)
def test_the_original_lists_are_limited_per_address(api, rate_limits, path):
    rate_limits(read_ip="3/min")
    answers = [api.get(path).status_code for _ in range(4)]
    assert answers == [200, 200, 200, 429], answers


def test_the_refresh_query_shares_the_status_computation(client, monkeypatch):
    computed = []
    real = pages.cluster_status
    monkeypatch.setattr(pages, "cluster_status", lambda: computed.append(1) or real())
    for seconds in range(2, 12):
        page = client.get(f"/?refresh={seconds}")
        assert f"every {seconds} s".encode() in page.content
    assert len(computed) == 1


def test_an_account_has_a_bounded_number_of_active_servers(pop, bob, settings):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "MAX_SERVERS_PER_ACCOUNT": 3}
    assert [pop(name=f"bob-{i}").status_code for i in range(3)] == [200] * 3
    refused = pop(name="bob-4")
    assert (refused.status_code, refused.json()["rc"]) == (403, "TooManyWorkers")
    assert pop(name="bob-1").status_code == 200  # a server it has keeps working
    assert Server.objects.count() == 3


@pytest.mark.django_db(transaction=True)
def test_an_account_holds_a_bounded_number_of_pops(settings):
    from accounts.models import User

    User.objects.create_user("bob", password=SERVER_PASSWORD)
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "HELD_POPS_PER_ACCOUNT": 2}

    async def main() -> tuple:
        held = [asyncio.create_task(timed_pop(f"bob-{i}", wait=5)) for i in range(2)]
        await asyncio.sleep(1)  # both held now
        holding = sum(long_poll._held_pops.values())
        third = asyncio.create_task(timed_pop("bob-3", wait=5))  # one too many
        done, _ = await asyncio.wait([*held, third], return_when=asyncio.FIRST_COMPLETED)
        await asyncio.gather(*held, third)
        return holding, done == {third}

    holding, third_first = run(main)
    assert holding == 2
    assert third_first  # answered while the two held ones still waited
    assert not long_poll._held_pops
