"""scripts/web.sh as ./run.sh starts it: what it tells the web server (issue 27)."""

from __future__ import annotations

import io
import re
import time
from datetime import timedelta

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from benchmarks import procstat
from koboldcluster.scheduler_health import PURGE_FUNC, purge_on_time
from koboldcluster.testing import ClusterProcess, started, wait_until

pytestmark = pytest.mark.django_db(transaction=True)
ACCESS_LINE = re.compile(r'"GET /healthz HTTP/1\.1" 200')


def _access_lines(env: dict[str, str], expected: int) -> list[str]:
    """The access log's lines for three requests, once `expected` of them are there (or a
    second after the requests when none are expected)."""
    with started(ClusterProcess(env)) as (web,):
        for _ in range(3):
            requests.get(f"{web.url}/healthz", timeout=10)
        if expected:
            wait_until(lambda: len(ACCESS_LINE.findall(web.output())) >= expected, timeout=10)
        else:
            time.sleep(1)
        return ACCESS_LINE.findall(web.output())


def test_the_access_log_is_off_unless_asked_for():
    assert _access_lines({"WEB_ACCESS_LOG": "on"}, expected=3) != []
    assert _access_lines({"WEB_ACCESS_LOG": "off"}, expected=0) == []


def test_the_web_server_may_open_as_many_files_as_the_hard_limit_allows():
    import resource

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    expected = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    web = ClusterProcess()
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))  # what it inherits
    try:
        web.start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        pids = procstat.group_pids(web.pgid)
        assert pids  # the master and its worker
        for pid in pids:
            with open(f"/proc/{pid}/limits") as limits:
                line = next(x for x in limits if x.startswith("Max open files"))
            assert line.split()[3] == expected  # the soft limit, raised to the hard one
    finally:
        web.stop()


def test_a_client_cannot_pick_its_address_with_a_forwarded_header():
    """uvicorn would take X-Forwarded-For from a peer on 127.0.0.1 as the client's address
    (its `proxy_headers`): off, so that only KOBOLDCLUSTER_TRUSTED_PROXIES decides. Four
    prompts from this machine, each claiming another address, against a limit of three an
    address: the fourth is refused."""
    env = {"KOBOLDCLUSTER_RATE_LIMITS": "on", "KOBOLDCLUSTER_RATE_SUBMIT_IP": "3/hour"}
    body = {"prompt": "Hello", "params": {"n": 1}, "username": "eve"}
    with started(ClusterProcess(env)) as (web,):
        statuses = [
            requests.post(
                f"{web.url}/generate/prompt",
                json=body,
                headers={"X-Forwarded-For": f"11.{index}.27.{index}"},
                timeout=10,
            ).status_code
            for index in range(4)
        ]
    assert 429 in statuses, statuses


def test_a_test_cluster_is_ready_on_a_database_older_than_the_schedulers_check():
    """`migrate` made the purge due when the test database was made; without a scheduler it
    is overdue 5 minutes later, and a test's cluster would never be ready
    (koboldcluster.testing._purge_kept_on_time)."""
    call_command("ensure_schedules", stdout=io.StringIO())  # as migrate made them
    Schedule.objects.filter(func=PURGE_FUNC).update(next_run=timezone.now() - timedelta(minutes=7))
    assert not purge_on_time().ok
    with started(ClusterProcess()) as (web,):
        assert requests.get(f"{web.url}/readyz", timeout=10).status_code == 200
