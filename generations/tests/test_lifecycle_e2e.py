"""The life cycle end to end: a real qcluster runs the schedules, the test only uses the API.

django-q2 looks for due schedules every 30 seconds (a fixed heartbeat of its cluster), so this
test takes about half a minute: the first heartbeat runs every schedule once.
"""

import io

import pytest
import requests
from django.core.management import call_command
from django_q.models import Success

from generations.models import Job, Prompt
from koboldcluster.testing import wait_until

pytestmark = [pytest.mark.e2e]

# Short lives, by configuration, for the web server and the scheduler alike: a prompt expires
# 10 s after its last use and a server has 1 s for a job.
SHORT_LIVES = {
    "KOBOLDCLUSTER_PROMPT_EXPIRY_SECONDS": "10",
    "KOBOLDCLUSTER_JOB_TTL_FLOOR_SECONDS": "1",
    "KOBOLDCLUSTER_JOB_TTL_MAX_SECONDS": "1",
}
SERVER = {"username": "zed", "password": "pw", "name": "zed-1", "model": "m"}


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return SHORT_LIVES


def test_the_scheduler_requeues_an_abandoned_job_and_purges_an_expired_prompt(
    cluster, cluster_env, scheduler
):
    call_command("ensure_schedules", stdout=io.StringIO())  # as run.sh does before qcluster
    qcluster = scheduler(**cluster_env)
    base = cluster.url
    kept = post_prompt(base, "kept alive by polling")
    job = requests.post(f"{base}/generate/pop", json=SERVER, timeout=10).json()
    forgotten = post_prompt(base, "never polled")

    def requeued_and_purged() -> bool:
        # Polling is what keeps `kept` alive, as a client waiting for its result does.
        status = requests.get(f"{base}/generate/prompt/{kept}", timeout=10).json()
        requeued = (status["restarted"], status["waiting"], status["processing"]) == (1, 1, 0)
        return requeued and not Prompt.objects.filter(id=forgotten).exists()

    try:
        wait_until(requeued_and_purged, timeout=150, interval=0.25, what="the scheduled tasks")
        wait_until(lambda: ran(PURGE) and ran(REAP), timeout=30, what="the task results")
    except AssertionError as error:
        raise AssertionError(f"{error}\nqcluster said:\n{qcluster.output()}") from None
    again = requests.post(f"{base}/generate/pop", json=SERVER, timeout=10).json()

    assert job["ttl"] == 1
    assert Job.objects.get(id=job["id"]).state == Job.State.ABANDONED
    assert again["id"] not in (None, job["id"])
    assert again["payload"]["prompt"] == "kept alive by polling"
    assert requests.get(f"{base}/generate/prompt/{forgotten}", timeout=10).status_code == 404


PURGE = "generations.tasks.purge_expired_prompts"
REAP = "generations.tasks.reap_overdue_jobs"


def ran(func: str) -> bool:
    """Whether qcluster ran `func` and it did something (its summary does not start with 0)."""
    results = Success.objects.filter(func=func).values_list("result", flat=True)
    return any(result.split()[1] != "0" for result in results)


def post_prompt(base: str, text: str) -> str:
    body = {"prompt": text, "params": {"n": 1, "max_length": 16}}
    return requests.post(f"{base}/generate/prompt", json=body, timeout=10).json()["id"]
