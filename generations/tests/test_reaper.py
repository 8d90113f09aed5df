"""The reaper: a job past its deadline gives its slot back; a late result is taken if it can be."""

import logging
from datetime import datetime, timedelta

import pytest

from accounts.models import LedgerEntry
from generations.lifecycle import jobs_reap
from generations.models import Job, Prompt
from generations.tasks import reap_overdue_jobs
from servers.models import Server

pytestmark = pytest.mark.django_db

START = datetime.fromisoformat("2030-01-01 00:00:00+00:00")


def at(time_machine, seconds: float) -> datetime:
    moment = START + timedelta(seconds=seconds)
    time_machine.move_to(moment, tick=False)
    return moment


@pytest.fixture
def popped(time_machine, submit_prompt, pop):
    """A prompt for one generation whose only slot bob-1 took at START (ttl 150 s)."""
    at(time_machine, 0)
    prompt_id = submit_prompt(params={"n": 1, "max_length": 16})
    response = pop().json()
    assert response["ttl"] == 150
    return prompt_id, response["id"]


def test_a_job_within_its_ttl_is_left_alone(time_machine, popped):
    _, job_id = popped

    assert jobs_reap(now=at(time_machine, 150)) == 0
    assert Job.objects.get(id=job_id).state == Job.State.PROCESSING


def test_an_overdue_job_gives_its_slot_to_the_next_pop(api, time_machine, popped, pop):
    prompt_id, job_id = popped

    assert jobs_reap(now=at(time_machine, 151)) == 1

    job = Job.objects.get(id=job_id)
    assert (job.state, job.finished) == (Job.State.ABANDONED, START + timedelta(seconds=151))
    assert Server.objects.get(name="bob-1").uncompleted_jobs == 1
    status = api.get(f"/generate/prompt/{prompt_id}").json()
    assert (status["waiting"], status["processing"], status["restarted"]) == (1, 0, 1)
    again = pop(name="bob-2").json()
    assert again["id"] not in (None, job_id)
    assert Job.objects.get(id=again["id"]).prompt_id == job.prompt_id
    assert jobs_reap(now=at(time_machine, 152)) == 0


def test_the_ttl_grows_with_the_request_on_a_slow_server(time_machine, submit_prompt, pop):
    at(time_machine, 0)
    pop()  # registers bob-1
    Server.objects.filter(name="bob-1").update(speed=0.5)  # tokens per second
    submit_prompt(params={"n": 1, "max_length": 80})

    ttl = pop().json()["ttl"]

    assert ttl == 2 * 80 / 0.5
    assert jobs_reap(now=at(time_machine, ttl)) == 0
    assert jobs_reap(now=at(time_machine, ttl + 1)) == 1


def test_the_third_abandoned_job_faults_the_prompt(
    api, time_machine, popped, pop, submit_generation
):
    prompt_id, first_job = popped
    jobs_reap(now=at(time_machine, 151))
    pop()
    jobs_reap(now=at(time_machine, 302))
    pop()

    jobs_reap(now=at(time_machine, 453))

    status = api.get(f"/generate/prompt/{prompt_id}").json()
    assert (status["faulted"], status["done"], status["restarted"], status["waiting"]) == (
        True,
        True,
        3,
        0,
    )
    assert Prompt.objects.get(id=prompt_id).state == Prompt.State.FAULTED
    assert pop().json()["id"] is None
    assert submit_generation(first_job, "too late").json()["rc"] == "AbortedGen"


def test_a_late_result_takes_its_slot_back_while_it_waits(
    api, time_machine, popped, submit_generation
):
    prompt_id, job_id = popped
    jobs_reap(now=at(time_machine, 151))
    at(time_machine, 160)

    response = submit_generation(job_id, "late but welcome")

    assert response.json() == {"reward": 4}
    prompt = Prompt.objects.get(id=prompt_id)
    assert (prompt.waiting, prompt.faulted_jobs) == (0, 0)
    status = api.get(f"/generate/prompt/{prompt_id}").json()
    assert (status["finished"], status["restarted"], status["done"]) == (1, 0, True)
    assert status["generations"] == ["late but welcome"]
    assert LedgerEntry.objects.filter(job_id=job_id).count() == 2


def test_a_late_result_is_refused_once_the_slot_went_to_another_server(
    api, time_machine, popped, pop, submit_generation
):
    prompt_id, job_id = popped
    jobs_reap(now=at(time_machine, 151))
    second = pop(name="bob-2").json()["id"]
    submit_generation(second, "on time")

    response = submit_generation(job_id, "too late")

    assert response.status_code == 404
    assert response.json()["rc"] == "AbortedGen"
    assert Job.objects.get(id=job_id).state == Job.State.ABANDONED
    assert not LedgerEntry.objects.filter(job_id=job_id).exists()
    status = api.get(f"/generate/prompt/{prompt_id}").json()
    assert (status["finished"], status["generations"]) == (1, ["on time"])


def test_a_late_result_is_refused_for_a_cancelled_prompt(
    api, time_machine, submit_prompt, pop, submit_generation
):
    at(time_machine, 0)
    prompt_id = submit_prompt(params={"n": 2, "max_length": 16})
    job_id = pop().json()["id"]
    api.delete(f"/generate/prompt/{prompt_id}")
    jobs_reap(now=at(time_machine, 151))

    response = submit_generation(job_id, "too late")

    assert response.json()["rc"] == "AbortedGen"
    assert not LedgerEntry.objects.exists()


def test_a_late_result_counts_once(time_machine, popped, submit_generation):
    _, job_id = popped
    jobs_reap(now=at(time_machine, 151))
    submit_generation(job_id, "late")

    response = submit_generation(job_id, "again")

    assert response.json()["rc"] == "DuplicateGen"
    assert LedgerEntry.objects.filter(job_id=job_id).count() == 2


def test_the_reaper_task_reports_and_logs_one_line(caplog, time_machine, popped):
    at(time_machine, 151)

    with caplog.at_level(logging.INFO, logger="generations.tasks"):
        summary = reap_overdue_jobs()

    assert summary == "reaped 1 overdue or stalled jobs"
    assert [r.getMessage() for r in caplog.records if r.name == "generations.tasks"] == [summary]
