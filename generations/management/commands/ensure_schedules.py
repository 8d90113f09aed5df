"""Register the cluster's scheduled tasks with django-q2, idempotently."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.utils import timezone
from django_q.models import Schedule

# Schedules whose name starts with this belong to this command: it creates, updates and
# removes them. Anything else in the table (added in the admin) it leaves alone.
PREFIX = "koboldcluster: "


@dataclass(frozen=True)
class Spec:
    name: str
    func: str
    minutes: int

    def fields(self) -> dict[str, Any]:
        return {
            "func": self.func,
            "schedule_type": Schedule.MINUTES,
            "minutes": self.minutes,
            "repeats": -1,
            "args": None,
            "kwargs": None,
            "hook": None,
            "cron": None,
            "cluster": None,
        }


def wanted() -> list[Spec]:
    """The schedules the cluster relies on, with the intervals from the settings."""
    every = settings.KOBOLDCLUSTER
    return [
        Spec(
            f"{PREFIX}purge expired prompts",
            "generations.tasks.purge_expired_prompts",
            every["PURGE_EVERY_MINUTES"],
        ),
        Spec(
            f"{PREFIX}reap overdue jobs",
            "generations.tasks.reap_overdue_jobs",
            every["REAPER_EVERY_MINUTES"],
        ),
        Spec(
            f"{PREFIX}fold the ledger",
            "accounts.tasks.fold_ledger",
            every["LEDGER_FOLD_EVERY_MINUTES"],
        ),
        # Every minute, always: it must read each job before the purge deletes it.
        Spec(f"{PREFIX}roll up statistics", "stats.tasks.rollup_statistics", 1),
        # Trust and quality (README): consequences within a minute of the evidence.
        Spec(f"{PREFIX}review servers", "servers.tasks.review_servers", 1),
        # Every minute: answers are compared while their prompts live (CANARY_EVERY_MINUTES
        # is how often each model gets a round).
        Spec(f"{PREFIX}canaries", "generations.tasks.run_canaries", 1),
        Spec(
            f"{PREFIX}promote trusted accounts",
            "servers.tasks.promote_trusted_accounts",
            every["TRUST_EVERY_MINUTES"],
        ),
    ]


class Command(BaseCommand):
    help = (
        "Create or update the django-q2 schedules the cluster relies on (purge, reaper, ledger "
        "fold, statistics) and remove retired ones. Safe to run on every start and on several "
        "nodes at once."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        specs = {spec.name: spec for spec in wanted()}
        for spec in specs.values():
            # Schedule.minutes is a small integer column.
            if not 1 <= spec.minutes <= 32767:
                raise CommandError(f"{spec.name}: {spec.minutes} minutes is out of range")
        now = timezone.now()
        created = updated = removed = 0
        with transaction.atomic():
            _lock_schedules()
            kept: dict[str, Schedule] = {}
            for schedule in Schedule.objects.filter(name__startswith=PREFIX).order_by("id"):
                if schedule.name in specs and schedule.name not in kept:
                    kept[schedule.name] = schedule
                else:  # retired, or a duplicate made by hand
                    schedule.delete()
                    removed += 1
            for name, spec in specs.items():
                schedule = kept.get(name)
                if schedule is None:
                    Schedule.objects.create(name=name, next_run=now, **spec.fields())
                    created += 1
                elif _apply(schedule, spec, now):
                    updated += 1
        self.stdout.write(
            f"{len(specs)} schedules in place: "
            f"{created} created, {updated} updated, {removed} removed"
        )


def _lock_schedules() -> None:
    """Keep two nodes starting at once from both creating the same schedule.

    On SQLite the transaction already holds the write lock. On PostgreSQL this lock mode
    conflicts with itself; the scheduler's own updates just wait the moment it takes.
    """
    if connection.vendor == "postgresql":
        table = connection.ops.quote_name(Schedule._meta.db_table)
        with connection.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")


def _apply(schedule: Schedule, spec: Spec, now: datetime) -> bool:
    """Bring `schedule` in line with `spec`; return whether anything changed."""
    changes = {k: v for k, v in spec.fields().items() if getattr(schedule, k) != v}
    if not changes:
        return False
    for field, value in changes.items():
        setattr(schedule, field, value)
    # A shorter interval takes effect now, not after the old, longer one has run out.
    soonest = now + timedelta(minutes=spec.minutes)
    if schedule.next_run is None or schedule.next_run > soonest:
        schedule.next_run = soonest
    schedule.save()
    return True
