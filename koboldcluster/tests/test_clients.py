"""The client address: the peer, unless the peer is a trusted proxy; IPv6 per /64."""

from __future__ import annotations

import ipaddress
import random

import pytest
import requests
from django.test import RequestFactory

from koboldcluster.clients import address_block, client_address
from koboldcluster.env import parse_networks

PROMPT = {"prompt": "hi", "params": {"max_length": 16}}


@pytest.fixture
def proxies(settings):
    def trust(value: str) -> None:
        settings.KOBOLDCLUSTER = {
            **settings.KOBOLDCLUSTER,
            "TRUSTED_PROXIES": parse_networks(value),
        }

    return trust


def address(peer: str, forwarded: str | None = None) -> str:
    headers = {"HTTP_X_FORWARDED_FOR": forwarded} if forwarded is not None else {}
    return client_address(RequestFactory().get("/", REMOTE_ADDR=peer, **headers))


def test_no_proxy_is_trusted_by_default():
    assert address("203.0.113.7", "1.1.1.1") == "203.0.113.7"


def test_a_trusted_proxy_passes_on_the_address_it_was_given(proxies):
    proxies("10.0.0.0/8")

    assert address("10.0.0.2", "1.1.1.1") == "1.1.1.1"
    assert address("10.0.0.2", "9.9.9.9, 1.1.1.1") == "1.1.1.1"  # 9.9.9.9: the client's claim
    assert address("10.0.0.2", "1.1.1.1, 10.0.0.3") == "1.1.1.1"  # two of our proxies
    assert address("10.0.0.2") == "10.0.0.2"


def test_an_untrusted_peer_cannot_pick_its_address(proxies):
    proxies("10.0.0.0/8")

    assert address("203.0.113.7", "1.1.1.1") == "203.0.113.7"


def test_ipv6_clients_count_per_64():
    assert address_block("2001:db8:1:2:aaaa::1") == address_block("2001:db8:1:2:bbbb::9")
    assert address_block("2001:db8:1:3::1") != address_block("2001:db8:1:2::1")
    assert address_block("::ffff:192.0.2.1") == "192.0.2.1"


def test_a_bad_proxy_list_stops_the_cluster_from_starting():
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured):
        parse_networks("10.0.0.0/8, not-an-address")


@pytest.mark.django_db
def test_rate_limits_count_ipv6_clients_per_64(api, rate_limits):
    rate_limits(submit_ip="1/min")

    first = api.post("/generate/prompt", PROMPT, format="json", REMOTE_ADDR="2001:db8::1")
    same_64 = api.post("/generate/prompt", PROMPT, format="json", REMOTE_ADDR="2001:db8::ff")
    other_64 = api.post("/generate/prompt", PROMPT, format="json", REMOTE_ADDR="2001:db8:0:1::1")

    assert [first.status_code, same_64.status_code, other_64.status_code] == [200, 429, 200]


@pytest.mark.django_db
def test_behind_a_trusted_proxy_the_forwarded_address_counts(api, rate_limits, proxies):
    proxies("127.0.0.1")
    rate_limits(submit_ip="1/min")

    def post(forwarded: str):
        return api.post("/generate/prompt", PROMPT, format="json", HTTP_X_FORWARDED_FOR=forwarded)

    assert [post("1.1.1.1").status_code, post("2.2.2.2").status_code] == [200, 200]
    assert post("1.1.1.1").status_code == 429


@pytest.mark.e2e
def test_two_processes_without_redis_share_each_limit(transactional_db):
    """The default server runs several processes: each limit holds for all of them."""
    from koboldcluster.testing import ClusterProcess

    env = {
        "REDIS_URL": "",
        "KOBOLDCLUSTER_RATE_LIMITS": "on",
        "KOBOLDCLUSTER_RATE_SUBMIT_IP": "5/hour",
        "KOBOLDCLUSTER_TRUSTED_PROXIES": "127.0.0.1",
    }
    # An address of its own, so that no other run on this machine adds to its count.
    client = str(ipaddress.IPv4Address(random.randrange(0x0B000000, 0x0BFFFFFF)))
    first, second = ClusterProcess(env), ClusterProcess(env)
    try:
        first.start()
        second.start()
        statuses = [
            requests.post(
                f"{process.url}/generate/prompt",
                json=PROMPT,
                headers={"X-Forwarded-For": client},
                timeout=10,
            ).status_code
            for process in (first, second) * 5
        ]
    finally:
        first.stop()
        second.stop()

    assert statuses == [200] * 5 + [429] * 5


def test_garbage_in_the_header_is_never_an_identity(proxies):
    """Issue 23, point 8: each made-up hop was a client of its own (no rate limit held)."""
    proxies("10.0.0.0/8")
    assert address("10.0.0.2", "not-an-address, 10.0.0.9") == "10.0.0.9"
    assert address("10.0.0.2", "x-1") == address("10.0.0.2", "x-2") == "10.0.0.2"


def test_num_proxies_believes_only_a_proxy_of_this_network(settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    assert address("127.0.0.1", "81.2.69.142") == "81.2.69.142"  # nginx on this machine
    assert address("10.1.2.3", "81.2.69.142") == "81.2.69.142"  # a proxy of the network
    assert address("93.184.216.34", "81.2.69.142") == "93.184.216.34"  # a client, directly
    assert address("127.0.0.1", "made-up") == "127.0.0.1"
