"""The job a pop creates runs on the right model and gets the right time, however the claim
is written: on PostgreSQL one statement works both out from the claimed row itself
(generations/stores/postgresql.py `_with_job_sql`); everywhere they must be Prompt.model_for and
Server.job_ttl's answers."""

from __future__ import annotations

from datetime import timedelta

import pytest

from generations.models import Job, Prompt
from servers.models import Server

pytestmark = pytest.mark.django_db

SERVED = [["m1"], ["m1", "m2"], ["m2", "m1"]]
ASKED = [[], ["m1"], ["m2"], ["m2", "m1"], ["m2", "other"]]


@pytest.mark.parametrize("server_models", SERVED)
@pytest.mark.parametrize("speed", [0.0, 0.7, 12.5, 5000.0])
def test_model_and_deadline_follow_the_rules(submit_prompt, pop, server_models, speed):
    pop(models=server_models, model=None, max_length=1024)  # the server exists, nothing to do
    Server.objects.filter(name="bob-1").update(speed=speed)
    server = Server.objects.get(name="bob-1")
    for models in ASKED:
        if models and not set(models) & set(server_models):
            continue  # not servable by this server
        for max_length in (16, 80, 512):
            prompt_id = submit_prompt(models=models, params={"max_length": max_length})
            answer = pop(models=server_models, model=None, max_length=1024).json()
            job = Job.objects.get(id=answer["id"])
            prompt = Prompt.objects.get(id=prompt_id)

            assert job.prompt_id == prompt.id
            assert job.model == prompt.model_for(server_models), (models, server_models)
            assert job.deadline - job.started == timedelta(seconds=server.job_ttl(max_length))
            assert answer["ttl"] == server.job_ttl(max_length)
