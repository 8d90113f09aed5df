"""POST /generate/prompt, GET and DELETE /generate/prompt/<id>."""

import uuid

import pytest

from accounts.models import User
from generations.models import Prompt

pytestmark = pytest.mark.django_db

STATUS_KEYS = {"finished", "processing", "restarted", "waiting", "done", "faulted", "generations"}


def test_submit_answers_only_an_id(api):
    response = api.post("/generate/prompt", {"prompt": "Hello"}, format="json")

    assert response.status_code == 200
    assert set(response.json()) == {"id"}
    prompt = Prompt.objects.get(id=uuid.UUID(response.json()["id"]))
    assert (prompt.n, prompt.waiting, prompt.max_length, prompt.max_context_length) == (
        1,
        1,
        80,
        1024,
    )
    assert prompt.user_id == User.ANONYMOUS_ID


def test_submit_stores_params_models_and_username(api):
    body = {
        "prompt": "I entered into an argument with a clown",
        "params": {"max_length": 16, "frmttriminc": True, "n": 2, "temperature": 0.7},
        "username": "db0",
        "models": ["KoboldAI/fairseq-dense-13B-Nerys-v2"],
        "unknown_field": "is ignored",
    }

    prompt_id = api.post("/generate/prompt", body, format="json").json()["id"]

    prompt = Prompt.objects.get(id=prompt_id)
    assert prompt.n == prompt.waiting == 2
    assert prompt.params == {"frmttriminc": True, "temperature": 0.7}
    assert prompt.models == ["KoboldAI/fairseq-dense-13B-Nerys-v2"]
    assert not prompt.any_model
    assert prompt.user.username == "db0"
    assert prompt.user.kind == User.Kind.UNCLAIMED


def test_submit_accepts_a_body_without_a_json_content_type(client):
    response = client.post(
        "/generate/prompt", '{"prompt": "Hi"}', content_type="application/x-www-form-urlencoded"
    )

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "params": {"n": 0}}, "params.n"),
        ({"prompt": "x", "params": {"n": 101}}, "params.n"),
        ({"prompt": "x", "params": {"n": "2"}}, "params.n"),
        ({"prompt": "x", "params": {"n": True}}, "params.n"),
        ({"prompt": "x", "params": {"max_length": 0}}, "params.max_length"),
        ({"prompt": "x", "params": {"max_length": 5000}}, "params.max_length"),
        ({"prompt": "x", "params": {"max_length": -3}}, "params.max_length"),
        ({"prompt": "x", "params": {"max_content_length": 0}}, "params.max_context_length"),
        (
            {"prompt": "x", "params": {"max_length": 200, "max_content_length": 100}},
            "params.max_context_length",
        ),
        ({"prompt": "x", "params": {"temperature": 9}}, "params.temperature"),
        ({"prompt": "x", "params": {"top_k": 1000}}, "params.top_k"),
        ({"prompt": "x", "params": {"sampler_order": [0, 1, 2]}}, "params.sampler_order"),
        ({"prompt": "x", "params": {"stop_sequence": "end"}}, "params.stop_sequence"),
        ({"prompt": "x", "params": {"frmttriminc": "yes"}}, "params.frmttriminc"),
        ({"prompt": "x", "params": []}, "params"),
        ({"prompt": "x", "models": "tiny-llm"}, "models"),
        ({"prompt": "x", "models": [1, 2]}, "models.0"),
        ({"prompt": "x", "username": 7}, "username"),
    ],
)
def test_submit_refuses_bad_input_naming_the_field(api, body, field):
    response = api.post("/generate/prompt", body, format="json")

    assert response.status_code == 400
    payload = response.json()
    assert payload["rc"] == "ValidationError"
    assert field in payload["errors"]
    assert field in payload["message"]
    assert not Prompt.objects.exists()


def test_submit_refuses_a_prompt_over_the_size_cap(api, settings):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "MAX_PROMPT_CHARS": 10}

    response = api.post("/generate/prompt", {"prompt": "x" * 11}, format="json")

    assert response.status_code == 400
    assert "prompt" in response.json()["errors"]


def test_n_cap_is_configurable(api, settings):
    caps = {"MAX_N": 500, "MAX_N_ANONYMOUS": 500, "CONCURRENCY_PER_CLIENT": 500}
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, **caps}

    response = api.post("/generate/prompt", {"prompt": "x", "params": {"n": 500}}, format="json")

    assert response.status_code == 200


def test_temperature_zero_is_raised_to_what_koboldai_accepts(api):
    body = {"prompt": "x", "params": {"temperature": 0}}

    prompt_id = api.post("/generate/prompt", body, format="json").json()["id"]

    assert Prompt.objects.get(id=prompt_id).params["temperature"] == 0.01


def test_malformed_json_is_a_json_400(api):
    response = api.post("/generate/prompt", "{not json", content_type="application/json")

    assert response.status_code == 400
    assert response.json()["rc"] == "InvalidJSON"


def test_a_json_array_body_is_refused(api):
    response = api.post("/generate/prompt", [1, 2], format="json")

    assert response.status_code == 400
    assert "body" in response.json()["errors"]


def test_status_of_a_new_prompt(api, submit_prompt):
    prompt_id = submit_prompt(params={"n": 3, "max_length": 16})

    response = api.get(f"/generate/prompt/{prompt_id}")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == STATUS_KEYS
    assert body == {
        "finished": 0,
        "processing": 0,
        "restarted": 0,
        "waiting": 3,
        "done": False,
        "faulted": False,
        "generations": [],
    }


def test_status_of_an_unknown_or_malformed_id_is_404(api):
    for prompt_id in (uuid.uuid4(), "not-a-uuid"):
        response = api.get(f"/generate/prompt/{prompt_id}")

        assert response.status_code == 404
        assert response.json()["rc"] == "RequestNotFound"


def test_status_shows_progress_and_done_when_all_finished(
    api, submit_prompt, pop, submit_generation
):
    prompt_id = submit_prompt(params={"n": 2, "max_length": 16})
    first = pop().json()["id"]
    second = pop(name="bob-2").json()["id"]
    submit_generation(first, " one")

    middle = api.get(f"/generate/prompt/{prompt_id}").json()
    submit_generation(second, " two")
    end = api.get(f"/generate/prompt/{prompt_id}").json()

    assert (middle["finished"], middle["processing"], middle["waiting"]) == (1, 1, 0)
    assert middle["done"] is False
    assert middle["generations"] == [" one"]
    assert (end["finished"], end["processing"], end["waiting"], end["done"]) == (2, 0, 0, True)
    assert end["generations"] == [" one", " two"]


def test_cancel_stops_new_slots_but_in_flight_jobs_finish(
    api, submit_prompt, pop, submit_generation
):
    prompt_id = submit_prompt(params={"n": 3, "max_length": 16})
    job_id = pop().json()["id"]

    cancelled = api.delete(f"/generate/prompt/{prompt_id}")

    assert cancelled.status_code == 200
    assert cancelled.json()["waiting"] == 0
    assert cancelled.json()["processing"] == 1
    assert pop(name="bob-2").json()["id"] is None
    assert submit_generation(job_id, " late").status_code == 200
    final = api.get(f"/generate/prompt/{prompt_id}").json()
    assert (final["finished"], final["done"], final["generations"]) == (1, True, [" late"])


def test_status_poll_keeps_the_prompt_alive(api, submit_prompt, time_machine):
    time_machine.move_to("2030-01-01 00:00:00+00:00", tick=False)
    prompt_id = submit_prompt()

    for minute in (9, 18, 27):
        time_machine.move_to(f"2030-01-01 00:{minute:02d}:00+00:00", tick=False)
        assert api.get(f"/generate/prompt/{prompt_id}").status_code == 200

    time_machine.move_to("2030-01-01 00:37:01+00:00", tick=False)
    assert api.get(f"/generate/prompt/{prompt_id}").status_code == 404
