"""Issue 23, point 8: metrics labels, huge numbers, and a progress that outlived its job.

(The waiting paths' security middleware: koboldcluster/tests/test_waiting_paths_security.py;
X-Forwarded-For: koboldcluster/tests/test_clients.py.)
"""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import SERVER_PASSWORD
from generations import progress
from generations.models import Job
from generations.progress_store import progress_text

pytestmark = pytest.mark.django_db

HUGE = "1" + "0" * 400


def labels_of(api, metric: str) -> set[str]:
    text = api.get("/metrics").content.decode()
    return {
        sample.labels["model"]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == metric
    }


def test_metrics_label_only_the_models_servers_run(api, submit_prompt, pop):
    pop(model="tiny-llm")
    submit_prompt(models=["tiny-llm"])
    submit_prompt(models=["made-up-1"])
    submit_prompt(models=["made-up-2"])
    labels = labels_of(api, "koboldcluster_queue_oldest_wait_seconds")
    assert labels == {"tiny-llm", "other"}


CHAT = '"messages": [{"role": "user", "content": "hi"}]'


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", '{"prompt": "hi", "max_tokens": ' + HUGE + "}"),
        ("/v1/completions", '{"prompt": "hi", "truncation_length": ' + HUGE + "}"),
        ("/v1/chat/completions", "{" + CHAT + ', "max_completion_tokens": ' + HUGE + "}"),
    ],
)
def test_a_number_beyond_any_column_is_400(api, path, body):
    response = api.post(path, data=body, content_type="application/json")
    assert response.status_code == 400, response.content


@pytest.mark.parametrize("extra", [{"seed": 10**30}, {"seed": -(10**30)}, {"token_count": 10**30}])
@pytest.mark.parametrize("path", ["/generate/submit", "/api/v2/generate/text/submit"])
def test_a_submit_with_a_number_beyond_any_column_is_400(
    api, pop, submit_prompt, register, extra, path
):
    submit_prompt()
    if path == "/generate/submit":
        job = pop().json()["id"]
        body, headers = {"id": job, "password": SERVER_PASSWORD, "generation": "x"}, {}
    else:
        _, key = register("carol")
        body = {"name": "carol-1", "models": ["tiny-llm"], "max_length": 80}
        job = api.post("/api/v2/generate/text/pop", body, format="json", HTTP_APIKEY=key)
        body, headers = {"id": job.json()["id"], "generation": "x"}, {"HTTP_APIKEY": key}
    response = api.post(path, {**body, **extra}, format="json", **headers)
    assert response.status_code == 400, response.content
    assert Job.objects.get().state == Job.State.PROCESSING


def test_a_progress_racing_the_submit_does_not_outlive_the_job(
    api, pop, submit_prompt, submit_generation, monkeypatch, own_transient_dir
):
    """The submit lands between the progress's check and its store: nothing is left."""
    submit_prompt()
    job = pop().json()["id"]
    real_store = progress.progress_store

    def submit_meanwhile(**kwargs):
        Job.objects.filter(id=job).update(state=Job.State.DONE)  # committed, not yet dropped
        real_store(**kwargs)

    monkeypatch.setattr(progress, "progress_store", submit_meanwhile)
    body = {"id": job, "password": SERVER_PASSWORD, "text": "Once upon"}
    response = api.post("/generate/progress", body, format="json")
    assert response.status_code == 404 and response.json()["rc"] == "AbortedGen"
    assert progress_text(Job.objects.get(id=job).prompt_id) is None
