"""Readiness of the scheduler: a cluster whose purge has not run for 5 minutes is not ready.

Privacy depends on the purge (prompts are wiped 10 minutes after their last use). django-q2
moves a schedule's `next_run` forward each time its cluster runs it, so a purge schedule
whose `next_run` lies more than OVERDUE in the past means no scheduler is running it.

The rule, so that a fresh database and the test suite stay ready:
- no purge schedule yet (`manage.py ensure_schedules` has not run): ready, not checked;
- the schedule is due, or overdue by less than OVERDUE: ready;
- overdue by more: not ready, and the answer says how long and what to start.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone
from django_q.models import Schedule

OVERDUE = timedelta(minutes=5)
PURGE_FUNC = "generations.tasks.purge_expired_prompts"


@dataclass(frozen=True)
class SchedulerCheck:
    """The shape of a readiness check's result: whether it passed, and why, for `/readyz`."""

    ok: bool
    detail: str

    def as_json(self) -> dict[str, object]:
        return {"ok": self.ok, "detail": self.detail}


def purge_on_time(now: datetime | None = None) -> SchedulerCheck:
    """Whether the purge runs on time, for the readiness checks; the detail holds no secrets."""
    now = now or timezone.now()
    next_runs = Schedule.objects.filter(func=PURGE_FUNC).exclude(repeats=0)
    due = next_runs.order_by("next_run").values_list("next_run", flat=True).first()
    if due is None:
        return SchedulerCheck(True, "no purge schedule (manage.py migrate makes it): not checked")
    late = now - due
    if late > OVERDUE:
        minutes = int(late.total_seconds() // 60)
        return SchedulerCheck(
            False, f"the purge is {minutes} min overdue: is manage.py qcluster running?"
        )
    return SchedulerCheck(True, "the purge runs on time")
