"""The scheduler's readiness rule (koboldcluster.scheduler_health), for /readyz."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from django_q.models import Schedule

from koboldcluster.scheduler_health import PURGE_FUNC, purge_on_time
from koboldcluster.testing import wait_until

pytestmark = pytest.mark.django_db


def test_a_database_without_schedules_is_ready():
    Schedule.objects.all().delete()  # migrate made them
    check = purge_on_time()
    assert check.ok and "not checked" in check.detail


def test_a_purge_due_now_or_lately_is_ready():
    Schedule.objects.all().delete()  # migrate made them, due when the test database was made
    call_command("ensure_schedules", stdout=io.StringIO())
    assert purge_on_time().ok
    assert purge_on_time(timezone.now() + timedelta(minutes=4, seconds=50)).ok


def test_a_purge_overdue_by_more_than_5_minutes_is_not_ready():
    call_command("ensure_schedules", stdout=io.StringIO())
    Schedule.objects.filter(func=PURGE_FUNC).update(next_run=timezone.now() - timedelta(minutes=7))

    check = purge_on_time()

    assert check.as_json() == {
        "ok": False,
        "detail": "the purge is 7 min overdue: is manage.py qcluster running?",
    }


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_scheduler_that_runs_the_purge_keeps_it_ready(scheduler, cluster_env):
    call_command("ensure_schedules", stdout=io.StringIO())
    Schedule.objects.filter(func=PURGE_FUNC).update(next_run=timezone.now() - timedelta(minutes=7))
    assert not purge_on_time().ok
    process = scheduler(**cluster_env)

    wait_until(lambda: purge_on_time().ok, timeout=60, what=f"the purge\n{process.output()}")
