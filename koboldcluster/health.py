"""Liveness and readiness: `/healthz` (the process answers) and `/readyz` (it can do its work).

Readiness is a list of named checks, each a function that returns a `CheckResult`. Another
check (say, "the scheduler ran recently") is one more function in `READINESS_CHECKS`. Checks
name what failed but never show an exception's text: the endpoints are public, and a database
error message can carry host names. The full error goes to the log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor

from koboldcluster.scheduler_health import purge_on_time

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail}


Check = Callable[[], CheckResult]


def database_reachable() -> CheckResult:
    """The default database answers a trivial query."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as error:
        logger.warning("readiness: the database is not reachable: %s", error)
        return CheckResult(False, f"not reachable ({type(error).__name__})")
    return CheckResult(True, "reachable")


# Once every migration this code knows is applied, it stays so for the life of the process
# (the code on disk does not change under it): later probes skip reading the migration files.
_migrated = False


def migrations_applied() -> CheckResult:
    """No migration of this code is missing from the database (`manage.py migrate` ran)."""
    global _migrated
    if _migrated:
        return CheckResult(True, "all applied")
    try:
        executor = MigrationExecutor(connection)
        missing = executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError as error:
        logger.warning("readiness: cannot read the applied migrations: %s", error)
        return CheckResult(False, f"cannot read the applied migrations ({type(error).__name__})")
    if missing:
        return CheckResult(False, f"{len(missing)} unapplied; run manage.py migrate")
    _migrated = True
    return CheckResult(True, "all applied")


# Run in this order; a check may assume the ones before it passed.
READINESS_CHECKS: list[tuple[str, Check]] = [
    ("database", database_reachable),
    ("migrations", migrations_applied),
    # Privacy depends on the purge: a cluster whose purge is 5 minutes overdue is not ready.
    ("scheduler", purge_on_time),
]


def readiness() -> tuple[bool, dict[str, dict[str, object]]]:
    """Run the readiness checks: (all passed, {name: {"ok", "detail"}}).

    After a failed check the rest are reported as skipped rather than run against a
    database that is not there.
    """
    results: dict[str, dict[str, object]] = {}
    ready = True
    for name, check in READINESS_CHECKS:
        result = check() if ready else CheckResult(False, "skipped")
        results[name] = result.as_json()
        ready = ready and result.ok
    return ready, results
