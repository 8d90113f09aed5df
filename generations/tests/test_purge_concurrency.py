"""The purge against a submit in flight, on real PostgreSQL connections: it waits, no deadlock.

On SQLite writers are serialised by one database lock, so there is no lock order to get wrong.
"""

import threading
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from generations.lifecycle import prompts_purge
from generations.models import Job, Prompt
from koboldcluster.testing import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def waiting_for_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COUNT(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return cursor.fetchone()[0]


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_a_purge_waits_for_a_submit_in_flight_without_deadlock(submit_prompt, pop):
    submit_prompt(params={"n": 2, "max_length": 16})
    job_id = pop().json()["id"]
    prompt_id = Job.objects.get(id=job_id).prompt_id
    later = timezone.now() + timedelta(hours=1)
    job_locked, errors = threading.Event(), []

    def submit_in_flight() -> None:
        # What job_submit does: the job first, then (after the ledger) the prompt.
        try:
            with transaction.atomic():
                Job.objects.filter(id=job_id).update(state=Job.State.DONE, text="x")
                job_locked.set()
                wait_until(waiting_for_a_lock, timeout=10, what="the purge to wait for a lock")
                Prompt.objects.filter(id=prompt_id).update(last_activity=F("created"))
        except Exception as error:
            errors.append(error)
        finally:
            connection.close()

    submit = threading.Thread(target=submit_in_flight)
    submit.start()
    job_locked.wait(timeout=10)

    result = prompts_purge(now=later)
    submit.join(timeout=30)

    assert errors == []
    assert (result.prompts, result.jobs) == (1, 1)
    assert not Prompt.objects.exists()
