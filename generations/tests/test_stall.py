"""Stalls (issue 25): a job whose server showed signs of life and then went quiet for
KOBOLDCLUSTER_STALL_SECONDS is given back without waiting for its ttl.

Signs of life are progress posts and heartbeats (a progress post without text), kept
outside the database (generations/liveness.py): in files without Redis, in the cache with.
"""

from datetime import datetime, timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conftest import SERVER_PASSWORD
from generations.lifecycle import jobs_reap, stalled_jobs_reap
from generations.liveness import last_signs, marks_sweep
from generations.models import Job, Prompt
from generations.progress_store import progress_text
from generations.status import prompt_status
from servers.models import Server

pytestmark = pytest.mark.django_db

START = datetime.fromisoformat("2030-01-01 00:00:00+00:00")


def at(time_machine, seconds: float) -> datetime:
    moment = START + timedelta(seconds=seconds)
    time_machine.move_to(moment, tick=False)
    return moment


@pytest.fixture(autouse=True, params=["files", "cache"])
def store(request, settings, own_transient_dir, monkeypatch):
    """Both places a sign of life is kept: files in the transient dir, or the cache (Redis's
    place; the tests' cache is in memory)."""
    monkeypatch.setattr("generations.liveness._in_cache", lambda: request.param == "cache")
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "STALL_SECONDS": 15}
    return request.param


@pytest.fixture
def popped(time_machine, submit_prompt, pop):
    """A prompt for one generation whose only slot bob-1 took at START (ttl 150 s)."""
    at(time_machine, 0)
    pop(name="bob-2")  # a second server, idle: it takes the slot when it comes back
    prompt_id = submit_prompt(params={"n": 1, "max_length": 16})
    job_id = pop().json()["id"]
    assert job_id
    return prompt_id, job_id


@pytest.fixture
def heartbeat(api):
    def post(job_id, **body):
        body = {"id": job_id, "password": SERVER_PASSWORD, **body}
        return api.post("/generate/progress", body, format="json")

    return post


def test_a_heartbeat_marks_the_job_alive_and_writes_nothing(heartbeat, popped, time_machine):
    prompt_id, job_id = popped
    at(time_machine, 3)

    with CaptureQueriesContext(connection) as queries:
        response = heartbeat(job_id)

    assert (response.status_code, response.json()) == (200, {"ok": True})
    assert last_signs([job_id]) == {job_id: (START + timedelta(seconds=3)).timestamp()}
    assert progress_text(prompt_id) is None  # no text: a stream shows nothing new
    statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    assert statements and set(statements) == {"SELECT"}, statements


def test_a_heartbeat_over_v2_marks_the_job_alive(api, register, time_machine):
    _, key = register("dave")
    at(time_machine, 0)
    api.post("/api/v2/generate/text/async", {"prompt": "Hi"}, format="json")
    pop = {"name": "dave-1", "models": ["tiny-llm"]}
    job_id = api.post("/api/v2/generate/text/pop", pop, format="json", HTTP_APIKEY=key).json()[
        "ids"
    ][0]

    response = api.post(
        "/api/v2/generate/text/progress", {"id": job_id}, format="json", HTTP_APIKEY=key
    )

    assert response.json() == {"ok": True}
    assert job_id in last_signs([job_id])


def test_a_job_that_went_quiet_is_given_back_before_its_ttl(heartbeat, popped, time_machine, pop):
    prompt_id, job_id = popped
    at(time_machine, 5)
    heartbeat(job_id)

    assert jobs_reap(now=at(time_machine, 20)) == 0  # 15 s quiet: not yet
    assert jobs_reap(now=at(time_machine, 21)) == 1

    job = Job.objects.get(id=job_id)
    assert (job.state, job.finished) == (Job.State.ABANDONED, START + timedelta(seconds=21))
    assert Server.objects.get(name="bob-1").uncompleted_jobs == 1
    assert Prompt.objects.get(id=prompt_id).waiting == 1
    again = pop(name="bob-2").json()["id"]
    assert Job.objects.get(id=again).prompt_id == job.prompt_id
    assert heartbeat(job_id).json()["rc"] == "AbortedGen"  # the bridge may stop


def test_a_job_that_keeps_showing_signs_of_life_runs_to_its_ttl(
    heartbeat, popped, time_machine, api
):
    _, job_id = popped
    for second in range(5, 140, 10):
        at(time_machine, second)
        if second % 20 == 5:
            heartbeat(job_id)
        else:  # progress counts too
            api.post(
                "/generate/progress",
                {"id": job_id, "password": SERVER_PASSWORD, "text": "x" * second},
                format="json",
            )
        assert jobs_reap(now=at(time_machine, second + 9)) == 0
    assert jobs_reap(now=at(time_machine, 151)) == 1  # the ttl still applies


def test_a_job_that_never_showed_a_sign_of_life_keeps_the_ttl_rule(popped, time_machine):
    _, job_id = popped

    assert jobs_reap(now=at(time_machine, 150)) == 0  # e.g. an AI Horde worker's job
    assert Job.objects.get(id=job_id).state == Job.State.PROCESSING


def test_a_late_submit_of_a_stalled_job_is_taken_while_its_slot_waits(
    heartbeat, popped, time_machine, submit_generation
):
    prompt_id, job_id = popped
    at(time_machine, 5)
    heartbeat(job_id)
    jobs_reap(now=at(time_machine, 30))

    response = submit_generation(job_id, " came back")

    assert response.status_code == 200
    job = Job.objects.get(id=job_id)
    assert (job.state, job.text) == (Job.State.DONE, " came back")
    prompt = Prompt.objects.get(id=prompt_id)
    assert (prompt.waiting, prompt.faulted_jobs) == (0, 0)  # only late, not a failure


def test_a_late_submit_after_the_slot_went_to_another_server_is_refused(
    heartbeat, popped, time_machine, submit_generation, pop
):
    _, job_id = popped
    at(time_machine, 5)
    heartbeat(job_id)
    jobs_reap(now=at(time_machine, 30))
    assert pop(name="bob-2").json()["id"]

    response = submit_generation(job_id, " too late")

    assert (response.status_code, response.json()["rc"]) == (404, "AbortedGen")


def test_a_waiting_front_end_gives_back_its_stalled_job_from_its_status(
    heartbeat, popped, time_machine
):
    prompt_id, job_id = popped
    at(time_machine, 5)
    heartbeat(job_id)
    at(time_machine, 19)
    assert stalled_jobs_reap(prompt_id=prompt_id, jobs=prompt_status(prompt_id=prompt_id).jobs) == 0

    at(time_machine, 21)
    status = prompt_status(prompt_id=prompt_id)
    assert stalled_jobs_reap(prompt_id=prompt_id, jobs=status.jobs) == 1
    assert Job.objects.get(id=job_id).state == Job.State.ABANDONED


def test_old_marks_are_swept(heartbeat, popped, time_machine, store):
    _, job_id = popped
    heartbeat(job_id)
    at(time_machine, 601)

    assert marks_sweep() == (1 if store == "files" else 0)  # the cache expires its own
    assert last_signs([job_id]) == {}


def test_a_wait_sleeps_until_its_job_could_have_stalled(heartbeat, popped, time_machine):
    """A front-end wait wakes when the stall becomes due (the last sign of life plus the
    stall time), not at its next periodic check; without a sign of life, not for a stall."""
    import math

    from asgiref.sync import async_to_sync

    from generations.waiting import STALL_MARGIN_SECONDS, stall_check_in

    prompt_id, job_id = popped
    at(time_machine, 8)
    assert async_to_sync(stall_check_in)(prompt_status(prompt_id=prompt_id)) == math.inf
    at(time_machine, 5)
    heartbeat(job_id)
    at(time_machine, 8)

    seconds = async_to_sync(stall_check_in)(prompt_status(prompt_id=prompt_id))

    assert seconds == pytest.approx(20 - 8 + STALL_MARGIN_SECONDS)
    at(time_machine, 20.1)
    assert stalled_jobs_reap(prompt_id=prompt_id, jobs=prompt_status(prompt_id=prompt_id).jobs) == 1
