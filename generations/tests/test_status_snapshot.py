"""A status is one consistent snapshot: a job given back while the status is being read can
never make an unfinished request look done (issue 15).

The status used to read the prompt row, then its jobs in a second statement. A server giving
its job back between the two left `waiting == 0` (read before) beside a faulted job (read
after): `done` with no generation, and a real client stopped polling there. Here the fault is
made to happen right before the status reads the jobs, whichever statement that is.
"""

from __future__ import annotations

import pytest
from django.db import connection

from generations.delivery import job_fault
from generations.models import Job


@pytest.fixture
def fault_before_the_jobs_are_read(db):
    """While active, the first statement that reads generations_job is preceded by the
    popped job's fault (as a server's give-back landing at that instant would be)."""
    state = {"job": None, "done": False}

    def interleave(execute, sql, params, many, context):
        if state["job"] is not None and not state["done"] and "generations_job" in sql:
            state["done"] = True
            job_fault(job=Job.objects.get(id=state["job"]))
        return execute(sql, params, many, context)

    with connection.execute_wrapper(interleave):
        yield state


@pytest.mark.parametrize("path", ["/generate/prompt/{}", "/api/v2/generate/text/status/{}"])
def test_a_fault_during_the_status_read_never_makes_it_look_done(
    api, submit_prompt, pop, fault_before_the_jobs_are_read, path
):
    prompt_id = submit_prompt()
    job_id = pop().json()["id"]
    fault_before_the_jobs_are_read["job"] = job_id

    status = api.get(path.format(prompt_id)).json()

    assert fault_before_the_jobs_are_read["done"]  # the give-back did land mid-read
    assert (status["done"], status["waiting"], status["restarted"]) == (False, 1, 1)


def test_cancel_reads_one_snapshot_too(api, submit_prompt, pop, fault_before_the_jobs_are_read):
    prompt_id = submit_prompt(params={"n": 2, "max_length": 16})
    job_id = pop().json()["id"]
    fault_before_the_jobs_are_read["job"] = job_id

    status = api.delete(f"/generate/prompt/{prompt_id}").json()

    # Cancelled: nothing waits any more, and the faulted job is counted as restarted.
    assert (status["done"], status["waiting"], status["processing"]) == (True, 0, 0)
    assert status["restarted"] == 1
