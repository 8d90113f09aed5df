"""The reaper racing late submits and new pops on real connections: nothing paid twice, no more
than n generations per prompt."""

from datetime import timedelta
from typing import Any

import pytest
from django.db.models import Count, Q
from django.utils import timezone

from accounts.models import LedgerEntry, User
from conftest import SERVER_PASSWORD
from generations.lifecycle import jobs_reap
from generations.models import Job, Prompt
from generations.tests.test_concurrency import run_together
from koboldcluster.asgi_client import APIClient

pytestmark = pytest.mark.django_db(transaction=True)


def server_body(name: str) -> dict[str, Any]:
    return {
        "username": "bob",
        "password": SERVER_PASSWORD,
        "name": name,
        "model": "tiny-llm",
        "max_length": 80,
        "max_content_length": 2048,
    }


def test_reaper_late_submits_and_pops_racing(submit_prompt):
    User.objects.create_user("bob", password=SERVER_PASSWORD)
    for i in range(12):
        submit_prompt(f"prompt {i}", params={"n": 1, "max_length": 16})
    late_jobs = [
        APIClient().post("/generate/pop", server_body("slow"), format="json").json()["id"]
        for _ in range(12)
    ]
    later = timezone.now() + timedelta(hours=1)

    def work(index: int) -> Any:
        if index == 0:
            return jobs_reap(now=later)
        if index <= 12:
            body = {"id": late_jobs[index - 1], "password": SERVER_PASSWORD, "generation": "late"}
            return APIClient().post("/generate/submit", body, format="json").status_code
        response = APIClient().post("/generate/pop", server_body(f"fast-{index}"), format="json")
        return response.json()["id"]

    results = run_together(20, work)

    assert not [r for r in results if isinstance(r, Exception)], results
    accepted = [r for r in results[1:13] if r == 200]
    assert set(results[1:13]) <= {200, 404}
    assert results[0] + len(accepted) >= 12  # each job was either reaped or submitted (or both)
    done = Job.objects.filter(state=Job.State.DONE)
    assert {str(job_id) for job_id in done.values_list("id", flat=True)} == {
        job_id for job_id, code in zip(late_jobs, results[1:13], strict=True) if code == 200
    }
    assert LedgerEntry.objects.filter(kind="usage").count() == done.count()
    assert LedgerEntry.objects.filter(kind="contribution").count() == done.count()
    prompts = Prompt.objects.annotate(
        done=Count("jobs", filter=Q(jobs__state=Job.State.DONE)),
        processing=Count("jobs", filter=Q(jobs__state=Job.State.PROCESSING)),
    )
    for prompt in prompts:
        assert prompt.done <= prompt.n
        assert prompt.waiting >= 0
        assert prompt.done + prompt.processing + prompt.waiting == prompt.n
