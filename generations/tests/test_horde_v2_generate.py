"""The AI Horde v2 generate endpoints: exact shapes, options, errors (research §2.1–§2.4)."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import LedgerEntry
from generations.models import Job, Prompt, PromptWorker
from koboldcluster.tests import horde_shapes as shapes
from servers.models import Server

pytestmark = pytest.mark.django_db

ASYNC = "/api/v2/generate/text/async"
POP = "/api/v2/generate/text/pop"
SUBMIT = "/api/v2/generate/text/submit"


def status_url(prompt_id: str) -> str:
    return f"/api/v2/generate/text/status/{prompt_id}"


@pytest.fixture
def carol(register):
    """A requester with an API key."""
    return register("carol")


@pytest.fixture
def dave(register):
    """A contributor whose server speaks the AI Horde protocol."""
    return register("dave")


@pytest.fixture
def horde(api):
    """Post as a horde client: `horde.post(url, body, key)`."""

    class Horde:
        def post(self, url, body, key=None, **extra):
            headers = {"HTTP_APIKEY": key} if key else {}
            return api.post(url, body, format="json", **headers, **extra)

        def ask(self, key=None, **body):
            body = {"prompt": "Once upon a time", "params": {"max_length": 16}, **body}
            response = self.post(ASYNC, body, key)
            assert response.status_code == 202, response.json()
            return response.json()["id"]

        def pop(self, key, **body):
            body = {"name": "dave-1", "models": ["tiny-llm"], **body}
            return self.post(POP, body, key)

        def submit(self, key, job_id, text=" and then", **body):
            return self.post(SUBMIT, {"id": job_id, "generation": text, **body}, key)

    return Horde()


def test_async_answers_202_with_the_id_and_the_most_it_can_cost(horde, carol, dave):
    user, key = carol
    horde.pop(dave[1])  # an active server: no warning

    response = horde.post(ASYNC, {"prompt": "Hi", "params": {"n": 2, "max_length": 20}}, key)

    assert response.status_code == 202
    body = response.json()
    shapes.check(body, shapes.ASYNC_ACCEPTED)
    assert body["kudos"] == 40.0
    assert "message" not in body and "warnings" not in body  # never "message": null
    prompt = Prompt.objects.get(id=body["id"])
    assert (prompt.user, prompt.n, prompt.waiting) == (user, 2, 2)
    assert (prompt.max_length, prompt.max_context_length) == (20, 2048)


def test_async_defaults_are_the_ai_hordes(horde, carol):
    prompt_id = horde.ask(carol[1], params={})

    prompt = Prompt.objects.get(id=prompt_id)
    assert (prompt.n, prompt.max_length, prompt.max_context_length) == (1, 80, 2048)
    assert prompt.params == {}
    assert (prompt.trusted_workers, prompt.slow_workers, prompt.softprompt) == (False, True, "")
    assert (prompt.workers, prompt.nsfw, prompt.batching) == ("any", True, True)
    assert prompt.client_agent == "unknown:0:unknown"


def test_async_warns_when_no_active_server_can_serve_it(horde, carol):
    response = horde.post(ASYNC, {"prompt": "Hi", "models": ["nobody-runs-this"]}, carol[1])

    body = response.json()
    assert response.status_code == 202
    assert body["message"].startswith("Warning: No available workers")
    assert body["warnings"][0]["code"] == "NoAvailableWorker"


def test_async_without_a_key_is_the_anonymous_users(horde):
    prompt_id = horde.ask(None)
    anonymous = horde.ask("0000000000")

    assert Prompt.objects.get(id=prompt_id).user_id == 0
    assert Prompt.objects.get(id=anonymous).user_id == 0


def test_async_keeps_the_client_agent_and_ignores_unknown_fields(horde, carol):
    body = {
        "prompt": "Hi",
        "params": {"max_length": 16, "width": 512, "temperature": 0.7},
        "context_fit": "grow",
        "template_fields": {},
    }
    response = horde.post(ASYNC, body, carol[1], HTTP_CLIENT_AGENT="lite:1:me")

    prompt = Prompt.objects.get(id=response.json()["id"])
    assert prompt.client_agent == "lite:1:me"
    assert prompt.params == {"temperature": 0.7}


def test_dry_run_answers_the_cost_and_queues_nothing(horde, carol):
    body = {"prompt": "Hi", "params": {"n": 3, "max_length": 50}, "dry_run": True}

    response = horde.post(ASYNC, body, carol[1])

    assert response.status_code == 200
    shapes.check(response.json(), shapes.DRY_RUN)
    assert response.json() == {"kudos": 150.0}
    assert not Prompt.objects.exists()


def test_request_options_are_stored(horde, carol, dave):
    server = Server.objects.create(name="dave-1", owner=dave[0])
    body = {
        "softprompt": "mysp",
        "trusted_workers": True,
        "slow_workers": False,
        "workers": [str(server.id)],
        "worker_blacklist": True,
        "nsfw": False,
        "disable_batching": True,
    }

    prompt = Prompt.objects.get(id=horde.ask(carol[1], **body))

    assert (prompt.softprompt, prompt.trusted_workers, prompt.slow_workers) == ("mysp", True, False)
    assert (prompt.workers, prompt.nsfw, prompt.batching) == ("except", False, False)
    assert list(PromptWorker.objects.values_list("server_id", flat=True)) == [server.id]


def test_an_empty_softprompt_means_none(horde, carol):
    assert Prompt.objects.get(id=horde.ask(carol[1], softprompt="")).softprompt == ""
    assert Prompt.objects.get(id=horde.ask(carol[1], softprompt=None)).softprompt == ""


@pytest.mark.parametrize(
    ("body", "status", "rc"),
    [
        ({"prompt": ""}, 400, "MissingPrompt"),
        ({"params": {"max_length": 100, "max_context_length": 90}}, 400, "TokenOverflow"),
        ({"params": {"sampler_order": [0, 1, 2, 3, 4, 5]}}, 400, "MissingFullSamplerOrder"),
        ({"params": {"stop_sequence": [str(i) for i in range(129)]}}, 400, "TooManyStopSequences"),
        ({"params": {"stop_sequence": ["x" * 1001, "y" * 1000]}}, 400, "ExcessiveStopSequence"),
        ({"extra_source_images": [{"image": "x"}]}, 400, "InvalidExtraSourceImages."),
        ({"proxied_account": "someone"}, 400, "OnlyServiceAccountProxy"),
        ({"params": {"n": 2}, "disable_batching": True}, 400, "RequiresTrust"),
        ({"webhook": "http://example.com/hook"}, 400, "BadRequest"),
        ({"style": "my-style"}, 404, "StyleNotFound"),
        ({"workers": [str(uuid.UUID(int=7))]}, 404, "WorkerNotFound"),
        ({"workers": ["not-a-uuid"]}, 404, "WorkerNotFound"),
        ({"params": {"max_length": 8}}, 400, "ValidationError"),
        ({"params": {"top_k": 101}}, 400, "ValidationError"),
        ({"trusted_workers": "yes"}, 400, "ValidationError"),
    ],
)
def test_async_refusals(horde, carol, body, status, rc):
    body = {"prompt": "Hi", **body}

    response = horde.post(ASYNC, body, carol[1])

    assert (response.status_code, response.json()["rc"]) == (status, rc), response.json()
    assert not Prompt.objects.exists()


def test_async_validation_errors_name_the_field(horde, carol):
    response = horde.post(ASYNC, {"prompt": "Hi", "params": {"max_length": 8}}, carol[1])

    shapes.check(response.json(), shapes.VALIDATION_ERROR)
    assert "params.max_length" in response.json()["errors"]


def test_a_trusted_user_may_disable_batching(horde, register):
    _, key = register("trusty", trusted=True)

    prompt = Prompt.objects.get(
        id=horde.ask(key, params={"n": 2, "max_length": 16}, disable_batching=True)
    )

    assert prompt.batching is False


def test_async_with_an_unknown_key_is_401(horde):
    response = horde.post(ASYNC, {"prompt": "Hi"}, "x" * 22)

    assert (response.status_code, response.json()["rc"]) == (401, "InvalidAPIKey")


def test_too_many_prompts_is_429(horde, register):
    _, key = register("greedy", concurrency=2)
    horde.ask(key, params={"n": 2, "max_length": 16})

    response = horde.post(ASYNC, {"prompt": "Hi"}, key)

    assert (response.status_code, response.json()["rc"]) == (429, "TooManyPrompts")


def test_status_before_any_server_has_every_key(api, horde, carol):
    prompt_id = horde.ask(carol[1], params={"n": 2, "max_length": 16})

    response = api.get(status_url(prompt_id))

    body = response.json()
    shapes.check(body, shapes.STATUS)
    assert body == {
        "finished": 0,
        "processing": 0,
        "restarted": 0,
        "waiting": 2,
        "done": False,
        "faulted": False,
        "wait_time": body["wait_time"],
        "queue_position": 1,
        "kudos": 0.0,
        "is_possible": False,
        "processing_workers": [],
        "generations": [],
    }


def test_a_whole_round_trip_through_v2(api, horde, carol, dave):
    prompt_id = horde.ask(carol[1], params={"max_length": 16, "temperature": 0.5})

    popped = horde.pop(dave[1], bridge_agent="KoboldAI Bridge:10:x", max_length=80).json()
    submitted = horde.submit(dave[1], popped["id"], "x" * 20, seed=42)
    status = api.get(status_url(prompt_id)).json()

    shapes.check(popped, shapes.POP_WITH_JOB)
    assert popped["payload"] == {
        "prompt": "Once upon a time",
        "n": 1,
        "max_length": 16,
        "max_context_length": 2048,
        "temperature": 0.5,
    }
    assert popped["ids"] == [popped["id"]]
    assert (popped["model"], popped["softprompt"], popped["extra_source_images"]) == (
        "tiny-llm",
        "",
        None,
    )
    assert popped["ttl"] >= 150
    assert submitted.status_code == 200
    shapes.check(submitted.json(), shapes.REWARD)
    assert submitted.json() == {"reward": 5.0}
    shapes.check(status, shapes.STATUS)
    server = Server.objects.get(name="dave-1")
    assert status["generations"] == [
        {
            "id": popped["id"],
            "worker_id": str(server.id),
            "worker_name": "dave-1",
            "workers": [{"id": str(server.id), "name": "dave-1"}],
            "model": "tiny-llm",
            "state": "ok",
            "text": "x" * 20,
            "seed": 42,
            "gen_metadata": [],
        }
    ]
    assert (status["finished"], status["done"], status["kudos"]) == (1, True, 5.0)
    assert (status["queue_position"], status["waiting"], status["is_possible"]) == (0, 0, True)
    ledger = LedgerEntry.objects.order_by("kind").values_list("kind", "user_id", "tokens")
    assert list(ledger) == [("contribution", dave[0].pk, 5), ("usage", carol[0].pk, 5)]


def test_pop_without_a_job_has_every_key(horde, dave):
    response = horde.pop(dave[1])

    body = response.json()
    shapes.check(body, shapes.POP_WITHOUT_JOB)
    assert body == {
        "id": None,
        "ids": [],
        "payload": {},
        "model": None,
        "softprompt": None,
        "ttl": None,
        "skipped": dict.fromkeys(shapes.SKIPPED, 0),
        "messages": [],
        "extra_source_images": None,
    }


def test_pop_declares_the_server(horde, dave):
    horde.pop(
        dave[1],
        models=["m1", "m2"],
        max_length=256,
        max_context_length=4096,
        softprompts=["sp1", "s" * 150],
        bridge_agent="KoboldAI Bridge:10:x",
        threads=2,
        nsfw=False,
    )

    server = Server.objects.get(name="dave-1")
    assert (server.owner, server.models, server.max_length) == (dave[0], ["m1", "m2"], 256)
    assert (server.max_context_length, server.threads, server.nsfw) == (4096, 2, False)
    assert server.softprompts == ["sp1", "s" * 100]
    assert server.bridge_agent == "KoboldAI Bridge:10:x"


def test_pop_defaults_are_the_ai_hordes(horde, dave):
    horde.pop(dave[1])

    server = Server.objects.get(name="dave-1")
    assert (server.max_length, server.max_context_length) == (512, 2048)
    assert (server.bridge_agent, server.threads, server.nsfw) == ("unknown:0:unknown", 1, True)


def test_pop_with_amount_takes_several_jobs_of_one_prompt(api, horde, carol, dave):
    first = horde.ask(carol[1], params={"n": 3, "max_length": 16})
    horde.ask(carol[1], params={"n": 2, "max_length": 16})

    body = horde.pop(dave[1], amount=5).json()

    assert len(body["ids"]) == 3 and body["id"] == body["ids"][0]
    jobs = Job.objects.filter(id__in=body["ids"])
    assert {str(job.prompt_id) for job in jobs} == {first}
    assert Prompt.objects.get(id=first).waiting == 0
    status = api.get(status_url(first)).json()
    assert (status["processing"], status["waiting"]) == (3, 0)


def test_a_prompt_without_batching_gives_one_job_per_pop(horde, register, dave):
    _, key = register("trusty", trusted=True)
    prompt_id = horde.ask(key, params={"n": 3, "max_length": 16}, disable_batching=True)

    body = horde.pop(dave[1], amount=3).json()

    assert len(body["ids"]) == 1
    assert Prompt.objects.get(id=prompt_id).waiting == 2


def test_pop_forwards_the_soft_prompt_to_servers_that_have_it(horde, carol, dave):
    horde.ask(carol[1], softprompt="mysp")

    without = horde.pop(dave[1]).json()
    with_it = horde.pop(dave[1], softprompts=["other", "mysp"]).json()

    assert without["id"] is None and without["skipped"]["matching_softprompt"] == 1
    assert with_it["softprompt"] == "mysp"


def test_trusted_workers_requests_go_to_trusted_owners_only(horde, carol, dave, register):
    horde.ask(carol[1], trusted_workers=True)
    _, trusted_key = register("erin", trusted=True)

    untrusted = horde.pop(dave[1]).json()
    trusted = horde.pop(trusted_key, name="erin-1").json()

    assert untrusted["id"] is None and untrusted["skipped"]["untrusted"] == 1
    assert trusted["id"] is not None


def test_slow_workers_false_skips_slow_servers(horde, carol, dave, settings):
    horde.ask(carol[1], slow_workers=False)
    horde.pop(dave[1])  # creates the server; it has no measured speed yet

    slow = horde.pop(dave[1]).json()
    Server.objects.filter(name="dave-1").update(speed=10)
    fast = horde.pop(dave[1]).json()

    assert slow["id"] is None and slow["skipped"]["performance"] == 1
    assert fast["id"] is not None


def test_workers_allow_and_deny_lists(horde, carol, dave):
    horde.pop(dave[1], name="dave-1")
    horde.pop(dave[1], name="dave-2")
    one, two = (Server.objects.get(name=n) for n in ("dave-1", "dave-2"))
    horde.ask(carol[1], workers=[str(two.id)])
    horde.ask(carol[1], workers=[str(two.id)], worker_blacklist=True)

    first = horde.pop(dave[1], name="dave-1").json()
    second = horde.pop(dave[1], name="dave-1").json()
    third = horde.pop(dave[1], name="dave-2").json()

    assert Job.objects.get(id=first["id"]).prompt.workers == "except"
    assert second["id"] is None and second["skipped"]["worker_id"] == 1
    assert Job.objects.get(id=third["id"]).prompt.workers == "only"
    assert one.id != two.id


def test_the_anonymous_key_cannot_pop(horde):
    response = horde.pop("0000000000")

    assert (response.status_code, response.json()["rc"]) == (403, "AnonForbiddenWorker")


def test_pop_and_submit_need_a_key(horde):
    pop = horde.pop(None)
    submit = horde.submit(None, str(uuid.uuid4()))

    assert (pop.status_code, pop.json()["rc"]) == (401, "InvalidAPIKey")
    assert (submit.status_code, submit.json()["rc"]) == (401, "InvalidAPIKey")


def test_pop_of_another_accounts_server_name_is_403(horde, dave, register):
    horde.pop(dave[1])
    _, key = register("mallory")

    response = horde.pop(key)

    assert (response.status_code, response.json()["rc"]) == (403, "WrongCredentials")


def test_pop_with_a_bad_priority_username_is_400(horde, dave):
    response = horde.pop(dave[1], priority_usernames=["alice#x"])

    assert (response.status_code, response.json()["rc"]) == (400, "InvalidPriorityUsername")


def test_pop_in_maintenance_is_403_with_the_message(horde, dave, carol):
    horde.pop(dave[1])
    Server.objects.filter(name="dave-1").update(maintenance=True, maintenance_msg="GPU swap")
    horde.ask(carol[1])

    response = horde.pop(dave[1])

    assert response.status_code == 403
    assert response.json() == {"message": "GPU swap", "rc": "WorkerMaintenance"}


def test_submit_twice_is_400_already_submitted(horde, carol, dave):
    horde.ask(carol[1])
    job_id = horde.pop(dave[1]).json()["id"]
    horde.submit(dave[1], job_id)

    again = horde.submit(dave[1], job_id)

    assert (again.status_code, again.json()["rc"]) == (400, "DuplicateGen")
    assert "already submitted" in again.json()["message"]
    assert LedgerEntry.objects.count() == 2


def test_submit_faulted_gives_the_slot_back_unpaid(api, horde, carol, dave):
    prompt_id = horde.ask(carol[1])
    job_id = horde.pop(dave[1]).json()["id"]

    response = horde.submit(dave[1], job_id, "Faulted", state="faulted")

    assert response.json() == {"reward": 0.0}
    status = api.get(status_url(prompt_id)).json()
    assert (status["restarted"], status["waiting"], status["finished"]) == (1, 1, 0)
    assert not LedgerEntry.objects.exists()


@pytest.mark.parametrize(
    ("state", "metadata", "shown"),
    [
        ("censored", None, "censored"),
        ("csam", None, "csam"),
        ("ok", [{"type": "censorship", "value": "csam", "ref": "r1"}], "csam"),
    ],
)
def test_censored_results_are_paid_and_shown_as_such(
    api, horde, carol, dave, state, metadata, shown
):
    prompt_id = horde.ask(carol[1])
    job_id = horde.pop(dave[1]).json()["id"]

    body = {"state": state, **({"gen_metadata": metadata} if metadata else {})}
    reward = horde.submit(dave[1], job_id, "x" * 8, **body).json()["reward"]
    generation = api.get(status_url(prompt_id)).json()["generations"][0]

    assert reward == 2.0
    assert generation["state"] == shown
    shapes.check(generation, shapes.GENERATION)
    if metadata:
        assert generation["gen_metadata"] == metadata


def test_submit_refuses_unknown_metadata(horde, carol, dave):
    horde.ask(carol[1])
    job_id = horde.pop(dave[1]).json()["id"]

    response = horde.submit(dave[1], job_id, gen_metadata=[{"type": "lora", "value": "x"}])
    too_many = horde.submit(
        dave[1], job_id, gen_metadata=[{"type": "censorship", "value": "csam"}] * 51
    )

    assert (response.status_code, response.json()["rc"]) == (400, "ValidationError")
    assert (too_many.status_code, too_many.json()["rc"]) == (400, "BadRequest")


def test_submit_of_an_unknown_or_expired_job_is_404(horde, carol, dave, time_machine):
    horde.ask(carol[1])
    job_id = horde.pop(dave[1]).json()["id"]
    time_machine.move_to(timezone.now() + timedelta(minutes=11))

    unknown = horde.submit(dave[1], str(uuid.uuid4()))
    expired = horde.submit(dave[1], job_id)
    null_id = horde.post(SUBMIT, {"id": None, "generation": "x"}, dave[1])

    assert (unknown.status_code, unknown.json()["rc"]) == (404, "InvalidJobID")
    assert (expired.status_code, expired.json()["rc"]) == (404, "InvalidJobID")
    assert null_id.status_code == 400


def test_a_late_submit_whose_slot_went_elsewhere_is_404_aborted(horde, carol, dave, register):
    horde.ask(carol[1])
    job_id = horde.pop(dave[1]).json()["id"]
    Job.objects.filter(id=job_id).update(state=Job.State.ABANDONED)
    Prompt.objects.update(waiting=0)  # the reaper gave the slot back and another server took it

    response = horde.submit(dave[1], job_id)

    assert (response.status_code, response.json()["rc"]) == (404, "AbortedGen")


def test_a_late_submit_while_the_slot_waits_is_accepted(horde, carol, dave):
    prompt_id = horde.ask(carol[1])
    job_id = horde.pop(dave[1]).json()["id"]
    Job.objects.filter(id=job_id).update(state=Job.State.ABANDONED)
    Prompt.objects.update(waiting=1)  # the reaper gave the slot back; nobody took it yet

    response = horde.submit(dave[1], job_id, "x" * 8)

    assert response.json() == {"reward": 2.0}
    assert Prompt.objects.get(id=prompt_id).waiting == 0


def test_submit_for_another_accounts_server_is_403(horde, carol, dave, register):
    horde.ask(carol[1])
    job_id = horde.pop(dave[1]).json()["id"]
    _, key = register("mallory")

    response = horde.submit(key, job_id)

    assert (response.status_code, response.json()["rc"]) == (403, "WrongCredentials")


def test_status_needs_no_key_and_counts_as_activity(api, horde, carol, time_machine):
    start = timezone.now()
    time_machine.move_to(start, tick=False)  # the prompt is born on the fake clock too
    prompt_id = horde.ask(carol[1])

    for minute in (8, 16, 24):
        time_machine.move_to(start + timedelta(minutes=minute), tick=False)
        assert api.get(status_url(prompt_id)).status_code == 200
    time_machine.move_to(start + timedelta(minutes=35), tick=False)

    gone = api.get(status_url(prompt_id))
    assert (gone.status_code, gone.json()["rc"]) == (404, "RequestNotFound")


@pytest.mark.parametrize(
    "prompt_id",
    ["00000000-0000-4000-8000-000000000000", "not-a-uuid"],
    ids=["unknown", "malformed"],
)
def test_status_of_an_unknown_request_is_404(api, prompt_id):
    for response in (api.get(status_url(prompt_id)), api.delete(status_url(prompt_id))):
        assert (response.status_code, response.json()["rc"]) == (404, "RequestNotFound")


def test_cancel_answers_the_status_and_stops_handing_out(api, horde, carol, dave):
    prompt_id = horde.ask(carol[1], params={"n": 3, "max_length": 16})
    job_id = horde.pop(dave[1]).json()["id"]

    response = api.delete(status_url(prompt_id))
    after = horde.pop(dave[1]).json()
    horde.submit(dave[1], job_id)
    final = api.get(status_url(prompt_id)).json()

    assert response.status_code == 200
    shapes.check(response.json(), shapes.STATUS)
    assert (response.json()["waiting"], response.json()["processing"]) == (0, 1)
    assert after["id"] is None
    assert (final["finished"], final["done"]) == (1, True)


def test_queue_position_and_wait_time(api, horde, carol, dave, register):
    horde.pop(dave[1])
    Server.objects.filter(name="dave-1").update(speed=10.0)
    first = horde.ask(carol[1], params={"n": 2, "max_length": 100})
    second = horde.ask(carol[1], params={"max_length": 50})

    one = api.get(status_url(first)).json()
    two = api.get(status_url(second)).json()

    assert (one["queue_position"], two["queue_position"]) == (1, 2)
    # 200 tokens ahead at 10 tokens/s on one thread; then 250.
    assert (one["wait_time"], two["wait_time"]) == (20, 25)
    assert one["is_possible"] and two["is_possible"]


def test_is_possible_follows_the_servers_that_could_serve(api, horde, carol, dave):
    horde.pop(dave[1], models=["m1"], max_length=100)
    for_m1 = horde.ask(carol[1], models=["m1"])
    for_m2 = horde.ask(carol[1], models=["m2"])
    too_long = horde.ask(carol[1], params={"max_length": 200})

    assert api.get(status_url(for_m1)).json()["is_possible"] is True
    assert api.get(status_url(for_m2)).json()["is_possible"] is False
    assert api.get(status_url(too_long)).json()["is_possible"] is False


def test_performance_counts_the_queue_and_the_servers(api, horde, carol, dave):
    horde.pop(dave[1], threads=3)
    horde.ask(carol[1], params={"n": 2, "max_length": 20})
    job_id = horde.pop(dave[1], threads=3).json()["id"]
    horde.ask(carol[1], params={"max_length": 30})
    horde.submit(dave[1], job_id, "x" * 40)

    body = api.get("/api/v2/status/performance").json()

    shapes.check(body, shapes.PERFORMANCE)
    assert body["queued_text_requests"] == 2  # one slot of the first, one of the second
    assert body["queued_tokens"] == 20 + 30
    assert body["past_minute_tokens"] == 10
    assert (body["text_worker_count"], body["text_thread_count"]) == (1, 3)
