"""POST /generate/pop: identity, check-in, matching and the skipped report."""

import uuid

import pytest
from django.db import connection
from django.utils import timezone

from accounts.models import User
from generations.models import Job, Prompt
from servers.models import Server

pytestmark = pytest.mark.django_db


def test_pop_hands_out_a_job_with_the_koboldai_payload(pop, submit_prompt):
    prompt_id = submit_prompt(
        params={"n": 1, "max_length": 16, "temperature": 0.5, "stop_sequence": ["\n"]}
    )

    response = pop()

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "payload", "ttl"}
    assert isinstance(body["ttl"], int) and body["ttl"] >= 150
    assert body["payload"] == {
        "prompt": "Once upon a time",
        "n": 1,
        "max_length": 16,
        "max_context_length": 1024,
        "temperature": 0.5,
        "stop_sequence": ["\n"],
    }
    job = Job.objects.get(id=uuid.UUID(body["id"]))
    assert str(job.prompt_id) == prompt_id
    assert job.state == Job.State.PROCESSING
    assert job.server.name == "bob-1"
    assert Prompt.objects.get(id=prompt_id).waiting == 0


def test_pop_with_nothing_to_do(pop):
    response = pop()

    assert response.status_code == 200
    assert response.json() == {
        "id": None,
        "skipped": {"model": 0, "max_content_length": 0, "max_length": 0},
    }


def test_each_slot_of_a_large_n_goes_to_one_server_at_a_time(pop, submit_prompt):
    submit_prompt(params={"n": 5, "max_length": 16})

    ids = [pop(name=f"bob-{i}").json()["id"] for i in range(6)]

    assert len(set(ids[:5])) == 5
    assert ids[5] is None


def test_model_filter(pop, submit_prompt):
    wanted = submit_prompt(models=["tiny-llm", "other-llm"])
    submit_prompt(models=["big-llm"])
    anything = submit_prompt()

    first = pop(model="other-llm").json()
    second = pop(model="other-llm").json()
    third = pop(model="other-llm").json()

    assert {
        Job.objects.get(id=first["id"]).prompt_id,
        Job.objects.get(id=second["id"]).prompt_id,
    } == {
        uuid.UUID(wanted),
        uuid.UUID(anything),
    }
    assert Job.objects.get(id=first["id"]).model == "other-llm"
    assert third == {"id": None, "skipped": {"model": 1, "max_content_length": 0, "max_length": 0}}


def test_lengths_match_in_the_right_direction(pop, submit_prompt):
    submit_prompt(params={"max_length": 100, "max_context_length": 1024})
    submit_prompt(params={"max_length": 50, "max_context_length": 4096})

    small = pop(max_length=80, max_content_length=2048).json()
    exact = pop(name="exact", max_length=100, max_content_length=1024).json()
    large = pop(name="large", max_length=200, max_content_length=8192).json()

    assert small == {"id": None, "skipped": {"model": 0, "max_content_length": 1, "max_length": 1}}
    assert exact["payload"]["max_length"] == 100
    assert large["payload"]["max_length"] == 50


def test_context_length_alias_and_models_list_are_accepted(pop, submit_prompt):
    submit_prompt(models=["b"])

    body = pop(model=None, models=["a", "b"], max_content_length=None, max_context_length=2048)

    assert body.json()["payload"]["max_length"] == 16
    assert Server.objects.get(name="bob-1").models == ["a", "b"]


def test_the_owner_prompts_come_first_on_the_owners_server(pop, submit_prompt, bob):
    submit_prompt("someone else's")
    submit_prompt("bob's own", username="bob", password="s3rver-pass")

    assert pop().json()["payload"]["prompt"] == "bob's own"


def test_first_pop_creates_the_account_with_a_hashed_password(pop):
    response = pop(username="carol", password="carols-secret", name="carol-1")

    assert response.status_code == 200
    carol = User.objects.get(username="carol")
    assert carol.kind == User.Kind.REGISTERED
    assert carol.check_password("carols-secret")
    assert "carols-secret" not in carol.password
    with connection.cursor() as cursor:
        for table in ("accounts_user", "servers_server"):
            cursor.execute(f"SELECT * FROM {table}")  # noqa: S608 - fixed table names
            assert "carols-secret" not in repr(cursor.fetchall())


def test_a_server_claims_an_unclaimed_name(pop, submit_prompt):
    submit_prompt(username="dave")
    Prompt.objects.update(expires_at=timezone.now())  # a claim waits for its prompts to end

    assert pop(username="dave", password="daves-pw", name="dave-1").status_code == 200
    assert User.objects.get(username="dave").kind == User.Kind.REGISTERED
    assert pop(username="dave", password="x", name="dave-1").status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "rc"),
    [
        ({"password": "wrong"}, 401, "InvalidCredentials"),
        ({"password": None}, 401, "CredentialsRequired"),
        ({"username": None}, 401, "CredentialsRequired"),
        ({"username": "Anonymous", "password": "x"}, 403, "AnonForbiddenWorker"),
    ],
)
def test_pop_refuses_bad_credentials(pop, bob, body, status, rc):
    response = pop(**body)

    assert response.status_code == status
    assert response.json()["rc"] == rc
    assert not Server.objects.exists()


def test_a_server_name_belongs_to_one_account(pop, bob):
    pop()

    response = pop(username="mallory", password="mallorys-pw")

    assert response.status_code == 403
    assert response.json()["rc"] == "WrongCredentials"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": None}, "name"),
        ({"name": ""}, "name"),
        ({"model": None}, "model"),
        ({"model": 3}, "model"),
        ({"max_length": 0}, "max_length"),
        ({"max_length": "80"}, "max_length"),
        ({"max_content_length": -1}, "max_content_length"),
        ({"threads": 99}, "threads"),
    ],
)
def test_pop_refuses_bad_input(pop, bob, body, field):
    response = pop(**body)

    assert response.status_code == 400
    assert field in response.json()["errors"]


def test_check_in_is_written_at_most_every_30_seconds(pop, time_machine):
    time_machine.move_to("2030-01-01 00:00:00+00:00", tick=False)
    pop()
    time_machine.move_to("2030-01-01 00:00:20+00:00", tick=False)
    pop()
    first = Server.objects.get().last_check_in

    time_machine.move_to("2030-01-01 00:00:31+00:00", tick=False)
    pop()

    assert first.second == 0
    assert Server.objects.get().last_check_in.second == 31


def test_a_changed_model_is_written_at_once(pop, time_machine):
    time_machine.move_to("2030-01-01 00:00:00+00:00", tick=False)
    pop()
    time_machine.move_to("2030-01-01 00:00:05+00:00", tick=False)

    pop(model="new-llm", max_length=200)

    server = Server.objects.get()
    assert (server.models, server.max_length) == (["new-llm"], 200)


def test_pop_costs_a_few_queries(pop, submit_prompt, django_assert_max_num_queries):
    for _ in range(20):
        submit_prompt()
    pop()

    with django_assert_max_num_queries(12):
        assert pop().json()["id"]
