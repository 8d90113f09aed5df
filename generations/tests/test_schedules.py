"""`manage.py ensure_schedules`, the scheduled tasks it names, and django-q2's admin pages."""

import io
import logging
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from django.utils.module_loading import import_string
from django_q.models import Schedule, Success
from django_q.tasks import async_task

from accounts.models import User
from accounts.tasks import fold_ledger
from accounts.tests.test_ledger import record

pytestmark = pytest.mark.django_db

OURS = {
    "koboldcluster: purge expired prompts": "generations.tasks.purge_expired_prompts",
    "koboldcluster: reap overdue jobs": "generations.tasks.reap_overdue_jobs",
    "koboldcluster: fold the ledger": "accounts.tasks.fold_ledger",
    "koboldcluster: roll up statistics": "stats.tasks.rollup_statistics",
    "koboldcluster: review servers": "servers.tasks.review_servers",
    "koboldcluster: canaries": "generations.tasks.run_canaries",
    "koboldcluster: promote trusted accounts": "servers.tasks.promote_trusted_accounts",
}


def ensure_schedules() -> str:
    out = io.StringIO()
    call_command("ensure_schedules", stdout=out)
    return out.getvalue().strip()


def test_migrate_registers_the_schedules():
    """Issue 23, point 9: `migrate`, `runserver`, `qcluster` (the Django way) purge too."""
    Schedule.objects.all().delete()
    call_command("migrate", verbosity=0)
    assert {s.name: s.func for s in Schedule.objects.all()} == OURS
    assert ensure_schedules() == "7 schedules in place: 0 created, 0 updated, 0 removed"


def test_creates_the_schedules_every_minute_but_trust_every_ten():
    Schedule.objects.all().delete()  # as before a first migrate
    assert ensure_schedules() == "7 schedules in place: 7 created, 0 updated, 0 removed"

    schedules = Schedule.objects.order_by("name")
    assert {s.name: s.func for s in schedules} == OURS
    assert {(s.name, s.schedule_type, s.minutes, s.repeats) for s in schedules} == {
        (name, Schedule.MINUTES, 10 if "trusted" in name else 1, -1) for name in OURS
    }
    for schedule in schedules:
        assert callable(import_string(schedule.func))


def test_running_it_again_changes_nothing():
    ensure_schedules()
    before = list(Schedule.objects.order_by("id").values())

    assert ensure_schedules() == "7 schedules in place: 0 created, 0 updated, 0 removed"
    assert list(Schedule.objects.order_by("id").values()) == before


def test_a_changed_interval_updates_the_schedule_in_place(settings):
    ensure_schedules()
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "LEDGER_FOLD_EVERY_MINUTES": 5}
    fold = Schedule.objects.get(func="accounts.tasks.fold_ledger")
    Schedule.objects.filter(pk=fold.pk).update(next_run=timezone.now() + timedelta(days=1))

    assert ensure_schedules() == "7 schedules in place: 0 created, 1 updated, 0 removed"

    updated = Schedule.objects.get(func="accounts.tasks.fold_ledger")
    assert (updated.pk, updated.minutes) == (fold.pk, 5)
    assert updated.next_run <= timezone.now() + timedelta(minutes=5)
    assert Schedule.objects.count() == 7


def test_retired_duplicated_and_edited_schedules_of_ours_are_put_right():
    ensure_schedules()
    Schedule.objects.create(name="koboldcluster: an old task", func="generations.tasks.gone")
    Schedule.objects.create(
        name="koboldcluster: reap overdue jobs", func="generations.tasks.reap_overdue_jobs"
    )
    Schedule.objects.filter(name="koboldcluster: purge expired prompts").update(repeats=0)
    theirs = Schedule.objects.create(name="an operator's own", func="math.floor", args="1.5")

    assert ensure_schedules() == "7 schedules in place: 0 created, 1 updated, 2 removed"

    assert {s.name: s.func for s in Schedule.objects.exclude(pk=theirs.pk)} == OURS
    assert Schedule.objects.get(name="koboldcluster: purge expired prompts").repeats == -1
    assert Schedule.objects.filter(pk=theirs.pk).exists()


def test_the_fold_task_reports_and_logs_one_line(caplog, alice, bob):
    record(alice, bob, 10, timezone.now() - timedelta(hours=1))

    with caplog.at_level(logging.INFO, logger="accounts.tasks"):
        summary = fold_ledger()

    assert summary == "folded 2 ledger entries"
    assert [r.getMessage() for r in caplog.records if r.name == "accounts.tasks"] == [summary]
    assert fold_ledger() == "folded 0 ledger entries"


def test_the_admin_shows_schedules_and_task_results(client):
    admin = User.objects.create_superuser("root", password="pw")
    client.force_login(admin)
    ensure_schedules()
    async_task("accounts.tasks.fold_ledger", sync=True)
    schedule = Schedule.objects.first()
    result = f"/admin/django_q/success/{Success.objects.get().pk}/change/"

    pages = {
        "/admin/django_q/schedule/": "koboldcluster: fold the ledger",
        f"/admin/django_q/schedule/{schedule.pk}/change/": schedule.func,
        "/admin/django_q/success/": "accounts.tasks.fold_ledger",
        result: "folded 0 ledger entries",
        "/admin/django_q/failure/": "0 Failed tasks",
        "/admin/django_q/ormq/": "0 Queued tasks",
    }

    for page, text in pages.items():
        response = client.get(page)
        assert response.status_code == 200, page
        assert text in response.text, page
