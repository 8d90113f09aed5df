"""scripts/web.sh as ./run.sh starts it: what it tells granian (issue 27)."""

from __future__ import annotations

import re
import time

import pytest
import requests

from benchmarks import procstat
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
