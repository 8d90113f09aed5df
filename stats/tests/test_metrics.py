"""`/metrics`: parses as Prometheus text, moves with the traffic, never shows prompt text."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
import requests
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from generations.delivery import job_fault
from generations.lifecycle import jobs_reap
from generations.models import Job
from koboldcluster import metrics
from koboldcluster.testing import BASE_DIR, ClusterProcess, started

pytestmark = pytest.mark.django_db


def scrape(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of every sample."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def read(api) -> dict[tuple, float]:
    response = api.get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return scrape(response.content.decode())


def model(name: str, value: str = "tiny-llm", **labels: str) -> tuple:
    return (name, tuple(sorted({"model": value, **labels}.items())))


def test_counters_and_gauges_move_with_the_traffic(api, submit_prompt, pop, submit_generation):
    before = read(api)
    submit_prompt("a secret about the moon", models=["tiny-llm"], params={"n": 3, "max_length": 16})
    middle = read(api)
    job = pop().json()["id"]
    submit_generation(job, text="x" * 24)  # 6 tokens
    second = pop().json()["id"]
    job_fault(job=Job.objects.get(id=second))
    Job.objects.filter(id=pop().json()["id"]).update(deadline=timezone.now() - timedelta(seconds=1))
    assert jobs_reap() == 1
    after = read(api)

    def moved(key: tuple, start: dict = before) -> float:
        return after.get(key, 0) - start.get(key, 0)

    assert moved(("koboldcluster_prompts_created_total", ())) == 1
    assert moved(model("koboldcluster_jobs_popped_total")) == 3
    assert moved(model("koboldcluster_jobs_submitted_total")) == 1
    assert moved(model("koboldcluster_tokens_total")) == 6
    assert moved(model("koboldcluster_jobs_faulted_total")) == 1
    assert moved(model("koboldcluster_jobs_reaped_total")) == 1
    pops = ("horde_pop_duration_seconds_count", (("api", "original"),))
    submits = ("horde_submit_duration_seconds_count", (("api", "original"),))
    assert moved(pops) == 3 and moved(submits) == 1
    # The queue as it stands: waiting, per model, and the servers.
    assert middle[("koboldcluster_prompts_waiting", ())] == 1
    assert after[("horde_performance_worker_count", (("type", "text"),))] == 1
    assert after[model("horde_model_workers_count", type="text")] == 1
    assert after[model("horde_model_jobs", type="text")] == 2  # two slots back in the queue
    assert after[model("koboldcluster_queue_oldest_wait_seconds")] >= 0
    assert after[("koboldcluster_first_job_wait_median_seconds", ())] >= 0


def test_no_prompt_or_generation_text_in_metrics(api, submit_prompt, pop, submit_generation):
    submit_prompt("the secret plan", models=["tiny-llm"])
    submit_generation(pop().json()["id"], text="a secret generation")
    text = api.get("/metrics").content.decode()
    assert "secret" not in text


def test_a_token_protects_metrics(api, settings, db):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "METRICS_TOKEN": "s3cret-token"}

    refused = api.get("/metrics")
    assert refused.status_code == 401
    assert refused.json()["rc"] == "InvalidMetricsToken"
    assert api.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert api.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token").status_code == 200


def test_gauges_of_exited_processes_are_forgotten(tmp_path):
    """A restarted worker's waiters must not count for ever (multiprocess mode, livesum)."""
    code = (
        "from koboldcluster import metrics; metrics.LONG_POLL_WAITERS.inc(5); "
        "metrics.POP_SECONDS.labels(api='v2').observe(0.2)"
    )
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "x"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=BASE_DIR)
    assert list(tmp_path.glob("gauge_livesum_*.db"))

    metrics._forget_dead_processes(str(tmp_path))

    assert not list(tmp_path.glob("gauge_livesum_*.db"))
    assert list(tmp_path.glob("histogram_*.db"))  # what it counted stays counted


@pytest.mark.e2e
def test_several_web_workers_answer_the_same_counts(transactional_db, tmp_path):
    """Two web processes (as run.sh starts them): whichever answers /metrics reports the pops
    both timed."""
    env = {"WEB_WORKERS": "2", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}

    def timing_workers() -> int:  # each web process writes its histograms to a file of its own
        return len({p.name.rsplit("_", 1)[1] for p in tmp_path.glob("histogram_*.db")})

    with started(ClusterProcess(env)) as (web,):
        body = {"username": "carol", "password": "pass-of-carol", "name": "carol-1", "model": "m"}
        # New connections, until both workers have timed some: which one accepts a connection
        # is the kernel's choice, and a pop is over so soon that one may take twenty in a row.
        sent = 0
        while sent < 20 or (timing_workers() < 2 and sent < 400):
            with requests.Session() as session:
                assert session.post(f"{web.url}/generate/pop", json=body, timeout=10).ok
            sent += 1
        counts = set()
        for _ in range(6):
            with requests.Session() as session:
                text = session.get(f"{web.url}/metrics", timeout=10).text
            counts.add(scrape(text)[("horde_pop_duration_seconds_count", (("api", "original"),))])
    assert counts == {float(sent)}
    assert timing_workers() == 2
