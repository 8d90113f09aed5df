"""`/healthz` and `/readyz`: plain JSON, no key, no rate limit, a named check per failure."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from django.db.migrations.executor import MigrationExecutor

from koboldcluster import health

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def migrations_not_yet_seen(monkeypatch):
    """Each test sees the migrations check run (it remembers a success per process)."""
    monkeypatch.setattr(health, "_migrated", False)


@pytest.fixture(autouse=True)
def purge_due_now():
    """The scheduler check passes whenever the test runs: migrate made the purge due at the
    start of the test session, which a long parallel run leaves behind by more than
    scheduler_health.OVERDUE (stats/tests/test_scheduler_health.py tests the check itself)."""
    from django.utils import timezone
    from django_q.models import Schedule

    from koboldcluster.scheduler_health import PURGE_FUNC

    Schedule.objects.filter(func=PURGE_FUNC).update(next_run=timezone.now())


def test_healthz_says_ok_to_anyone(api):
    response = api.get("/healthz", HTTP_APIKEY="not-a-key")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert response["Access-Control-Allow-Origin"] == "*"


def test_readyz_reports_each_check(api):
    response = api.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {
            "database": {"ok": True, "detail": "reachable"},
            "migrations": {"ok": True, "detail": "all applied"},
            # stats/tests/test_scheduler_health.py covers this one.
            # migrate registered the schedules: the purge is due now.
            "scheduler": {"ok": True, "detail": "the purge runs on time"},
        },
    }
    assert response["Access-Control-Allow-Origin"] == "*"


def test_unapplied_migrations_make_it_not_ready(api, monkeypatch):
    monkeypatch.setattr(MigrationExecutor, "migration_plan", lambda self, targets: [object()])

    response = api.get("/readyz")

    assert response.status_code == 503
    assert response.json()["failed"] == ["migrations", "scheduler"]
    assert response.json()["checks"]["migrations"] == {
        "ok": False,
        "detail": "1 unapplied; run manage.py migrate",
    }


def test_an_unreachable_database_is_named_without_its_error_text(api, monkeypatch):
    def refuse(*args, **kwargs):
        raise OperationalError('connection to server at "db.internal" failed')

    monkeypatch.setattr(health.connection, "cursor", refuse)

    response = api.get("/readyz")

    assert response.status_code == 503
    assert response.json() == {
        "status": "not ready",
        "failed": ["database", "migrations", "scheduler"],
        "checks": {
            "database": {"ok": False, "detail": "not reachable (OperationalError)"},
            "migrations": {"ok": False, "detail": "skipped"},
            "scheduler": {"ok": False, "detail": "skipped"},
        },
    }
    assert "db.internal" not in response.content.decode()


def test_a_new_check_is_one_more_entry_in_the_list(api, monkeypatch):
    def scheduler_ran() -> health.CheckResult:
        return health.CheckResult(False, "last run 10 minutes ago")

    checks = [*health.READINESS_CHECKS, ("another", scheduler_ran)]
    monkeypatch.setattr(health, "READINESS_CHECKS", checks)

    response = api.get("/readyz")

    assert (response.status_code, response.json()["failed"]) == (503, ["another"])
    assert response.json()["checks"]["another"]["detail"] == "last run 10 minutes ago"


def test_probes_are_never_rate_limited(api, rate_limits):
    rate_limits(read_ip="1/hour", read_account="1/hour")

    statuses = {api.get(path).status_code for path in ["/healthz", "/readyz"] * 5}

    assert statuses == {200}


def test_other_methods_get_a_json_405(api):
    response = api.post("/readyz", {}, format="json")

    assert (response.status_code, response.json()["rc"]) == (405, "MethodNotAllowed")
