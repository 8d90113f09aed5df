"""No single request costs the server more than CPU_BOUND of CPU, whatever it sends (issue 23).

A real server (uvicorn, as ./run.sh starts it) gets the table of hostile requests of
koboldcluster/tests/hostile.py: a megabyte in every text field of every face, lists of
10,000, numbers past any column, model names made to cost, JSON nested past the parser.
Each request's server CPU is read from /proc around it (not wall time: the machine is
shared); none may exceed the bound, and none may be answered with a 5xx (but the designed
504 of a front-end request no server came for).
"""

from __future__ import annotations

import json

import pytest
import requests

from koboldcluster.tests.hostile import hostile_requests, server_cpu_seconds

pytestmark = pytest.mark.e2e

CPU_BOUND = 0.1  # seconds; measured here the costliest took 20-50 ms (the status page)
WAITING = ("/v1/completions", "/v1/chat/completions", "/api/v1/generate")


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return {
        "KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS": "0.5",
        "KOBOLDCLUSTER_FRONTEND_GRACE_SECONDS": "0.2",
        "KOBOLDCLUSTER_POP_WAIT_MAX_SECONDS": "1",
    }


def send(session: requests.Session, url: str, method: str, path: str, body, key: str):
    headers = {"apikey": key} if path.startswith("/api/v2/") else {}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/json"
        return session.request(method, url + path, data=body, headers=headers, timeout=60)
    return session.request(method, url + path, json=body, headers=headers, timeout=60)


def a_job(session: requests.Session, url: str) -> str:
    session.post(f"{url}/generate/prompt", json={"prompt": "Once"}, timeout=10).raise_for_status()
    pop = {"username": "bob", "password": "s3rver-pass", "name": "bob-1", "model": "m"}
    return session.post(f"{url}/generate/pop", json=pop, timeout=10).json()["id"]


def test_no_request_costs_the_server_more_than_the_bound(cluster):
    session = requests.Session()
    key = session.post(f"{cluster.url}/api/v2/register", json={"username": "carol"}, timeout=10)
    key = key.json()["apikey"]
    cases = hostile_requests(a_job(session, cluster.url))
    for method, path, _ in cases:  # each view once, so that no first-use cost is measured
        send(session, cluster.url, method, path.split("?")[0], {"prompt": "warm"}, key)
    costs = []
    for method, path, body in cases:
        before = server_cpu_seconds(cluster.pgid)
        response = send(session, cluster.url, method, path, body, key)
        spent = server_cpu_seconds(cluster.pgid) - before
        size = len(body) if isinstance(body, bytes) else len(json.dumps(body or ""))
        costs.append((spent, response.status_code, f"{method} {path[:60]} ({size} bytes)"))
    costs.sort(reverse=True)
    report = "\n".join(f"{s * 1000:7.1f} ms  {code}  {what}" for s, code, what in costs[:15])
    print(f"\n{len(costs)} hostile requests; the costliest:\n{report}")
    errors = [c for c in costs if c[1] >= 500 and not (c[1] == 504 and c[2].split()[1] in WAITING)]
    assert errors == [], report
    assert costs[0][0] < CPU_BOUND, report
    assert "Traceback" not in cluster.output()
