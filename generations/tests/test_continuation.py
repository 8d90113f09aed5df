"""Continue, don't restart (issue 25): a job given back after it produced text keeps that
text, paid to its server in the same transaction, and the next server continues from it.

The payment rule: each server is paid for the tokens of its own part (the cluster's count of
the kept text, a quarter of its characters; a submit's plausible reported count), once per
job (the ledger's unique (job_id, kind)); the client is charged the sum, which is the whole
generation's count.
"""

from datetime import timedelta

import pytest
from django.db.models import Sum
from django.utils import timezone

from accounts.models import LedgerEntry
from conftest import SERVER_PASSWORD
from generations.lifecycle import jobs_reap
from generations.models import Job, Prompt

pytestmark = pytest.mark.django_db

PROMPT = "Once upon a time"


@pytest.fixture
def submit(submit_generation):
    return submit_generation


def ledger() -> dict[tuple[str, str], tuple[int, int]]:
    """(kind, job id) → (tokens, kudos) of every entry of a job."""
    return {
        (entry.kind, str(entry.job_id)): (entry.tokens, entry.kudos)
        for entry in LedgerEntry.objects.filter(job_id__isnull=False)
    }


def fault(submit, job_id: str, text: str):
    response = submit(job_id, text, state="faulted")
    assert response.status_code == 200, response.json()
    return response


@pytest.fixture
def prompt_id(submit_prompt, pop):
    pop(name="bob-2")  # online before the prompt comes
    return submit_prompt(PROMPT, params={"n": 1, "max_length": 16})


def test_a_faulted_jobs_text_is_kept_paid_and_continued_by_the_next_server(
    api, prompt_id, pop, submit
):
    first = pop().json()

    fault(submit, first["id"], "abcdefgh")  # 8 characters: 2 tokens by the cluster's count

    kept = Job.objects.get(id=first["id"])
    assert (kept.state, kept.text, kept.tokens) == (Job.State.FAULTED, "abcdefgh", 2)
    prompt = Prompt.objects.get(id=prompt_id)
    assert (prompt.waiting, prompt.faulted_jobs, prompt.continues) == (1, 0, kept.id)
    assert ledger() == {("usage", first["id"]): (2, -2), ("contribution", first["id"]): (2, 2)}

    second = pop(name="bob-2").json()
    assert second["payload"]["prompt"] == PROMPT + "abcdefgh"
    assert second["payload"]["max_length"] == 14
    assert submit(second["id"], " the end").json() == {"reward": 2}

    last = Job.objects.get(id=second["id"])
    assert (last.state, last.text, last.carried_tokens, last.tokens) == (
        Job.State.DONE,
        "abcdefgh the end",
        2,
        2,
    )
    status = api.get(f"/generate/prompt/{prompt_id}").json()
    assert status["generations"] == ["abcdefgh the end"]
    assert status["done"] is True
    assert ledger() == {
        ("usage", first["id"]): (2, -2),
        ("contribution", first["id"]): (2, 2),
        ("usage", second["id"]): (2, -2),
        ("contribution", second["id"]): (2, 2),
    }


def test_a_stalled_or_overdue_jobs_progress_is_kept_and_a_late_result_is_refused(
    prompt_id, pop, submit, api
):
    first = pop().json()
    progress = {"id": first["id"], "password": SERVER_PASSWORD, "text": "abcd"}
    assert api.post("/generate/progress", progress, format="json").status_code == 200

    assert jobs_reap(now=timezone.now() + timedelta(seconds=200)) == 1

    kept = Job.objects.get(id=first["id"])
    assert (kept.state, kept.text, kept.tokens) == (Job.State.ABANDONED, "abcd", 1)
    # Its result arriving now would pay the kept text twice: the slot continues elsewhere.
    late = submit(first["id"], "abcd and more")
    assert (late.status_code, late.json()["rc"]) == (404, "AbortedGen")
    assert "kept" in late.json()["message"]
    assert ledger() == {("usage", first["id"]): (1, -1), ("contribution", first["id"]): (1, 1)}
    assert pop(name="bob-2").json()["payload"]["prompt"] == PROMPT + "abcd"


def test_a_chain_of_three_servers_pays_each_its_part_and_charges_the_sum(
    prompt_id, pop, submit, api
):
    first = pop().json()
    fault(submit, first["id"], "aaaa")
    second = pop(name="bob-2").json()
    # A continuation's progress shows the whole text so far (what a stream shows).
    progress = {"id": second["id"], "password": SERVER_PASSWORD, "text": "bbbbbbbb"}
    api.post("/generate/progress", progress, format="json")
    fault(submit, second["id"], "bbbbbbbb")
    third = pop(name="bob-3").json()

    assert third["payload"]["prompt"] == PROMPT + "aaaabbbbbbbb"
    assert third["payload"]["max_length"] == 16 - 3
    submit(third["id"], "cccc")

    last = Job.objects.get(id=third["id"])
    assert (last.text, last.carried_tokens, last.whole_tokens) == ("aaaabbbbbbbbcccc", 3, 4)
    parts = {job.id: job.tokens for job in Job.objects.all()}
    assert parts == {
        Job.objects.get(id=first["id"]).id: 1,
        Job.objects.get(id=second["id"]).id: 2,
        last.id: 1,
    }
    usage = LedgerEntry.objects.filter(kind="usage").aggregate(total=Sum("tokens"))["total"]
    assert usage == last.whole_tokens == 4
    status = api.get(f"/api/v2/generate/text/status/{prompt_id}").json()
    assert [worker["name"] for worker in status["generations"][0]["workers"]] == [
        "bob-1",
        "bob-2",
        "bob-3",
    ]
    assert status["kudos"] == 4.0


def test_kept_text_that_uses_the_whole_max_length_is_the_generation(
    submit_prompt, pop, submit, api
):
    prompt_id = submit_prompt(PROMPT, params={"n": 1, "max_length": 2})
    first = pop().json()

    fault(submit, first["id"], "abcdefgh")

    job = Job.objects.get(id=first["id"])
    assert (job.state, job.text, job.tokens) == (Job.State.DONE, "abcdefgh", 2)
    status = api.get(f"/generate/prompt/{prompt_id}").json()
    assert (status["done"], status["generations"]) == (True, ["abcdefgh"])


def test_a_request_for_several_generations_starts_the_slot_again(submit_prompt, pop, submit):
    prompt_id = submit_prompt(PROMPT, params={"n": 2, "max_length": 16})
    first = pop().json()

    fault(submit, first["id"], "abcdefgh")

    job = Job.objects.get(id=first["id"])
    assert (job.state, job.tokens) == (Job.State.FAULTED, 0)
    prompt = Prompt.objects.get(id=prompt_id)
    assert (prompt.waiting, prompt.faulted_jobs, prompt.continues) == (2, 1, None)
    assert not LedgerEntry.objects.exists()


def test_kept_text_moves_no_kudos_when_the_server_serves_its_owner(submit_prompt, pop, submit, bob):
    from accounts.keys import apikey_issue

    _, key = apikey_issue(user=bob)
    pop()
    prompt_id = submit_prompt(PROMPT, apikey=key, params={"n": 1, "max_length": 16})
    first = pop().json()

    fault(submit, first["id"], "abcdefgh")

    assert Prompt.objects.get(id=prompt_id).continues is not None
    assert ledger() == {("usage", first["id"]): (2, 0), ("contribution", first["id"]): (2, 0)}


def test_a_continuation_prefers_a_server_of_the_same_model(submit_prompt, pop, submit):
    pop(name="bob-2")
    pop(name="other-1", model="other-llm")
    prompt_id = submit_prompt(PROMPT, params={"n": 1, "max_length": 16})
    first = pop().json()

    fault(submit, first["id"], "abcdefgh")

    assert Prompt.objects.get(id=prompt_id).models == ["tiny-llm"]
    assert pop(name="other-1", model="other-llm").json()["id"] is None
    assert pop(name="bob-2").json()["id"] is not None


def test_without_another_server_of_the_model_any_server_may_continue(submit_prompt, pop, submit):
    pop(name="other-1", model="other-llm")
    submit_prompt(PROMPT, params={"n": 1, "max_length": 16})
    first = pop().json()

    fault(submit, first["id"], "abcdefgh")

    assert pop(name="other-1", model="other-llm").json()["payload"]["prompt"].endswith("abcdefgh")


def test_stop_sequences_apply_to_the_joined_text(submit_prompt, pop, submit):
    """A stop sequence split by the hand-over ("\\nYou:" as "\\nY" + "ou:") ends the joined
    text, as it would have ended one server's (KoboldAI keeps the stop sequence)."""
    pop(name="bob-2")
    params = {"n": 1, "max_length": 40, "stop_sequence": ["\nYou:"]}
    submit_prompt(PROMPT, params=params)
    first = pop().json()
    fault(submit, first["id"], "Hello there\nY")

    second = pop(name="bob-2").json()
    submit(second["id"], "ou: and more")

    assert Job.objects.get(id=second["id"]).text == "Hello there\nYou:"


def test_kept_text_that_holds_a_stop_sequence_is_the_generation(submit_prompt, pop, submit):
    params = {"n": 1, "max_length": 40, "stop_sequence": ["\nYou:"]}
    prompt_id = submit_prompt(PROMPT, params=params)
    first = pop().json()

    fault(submit, first["id"], "Hello there\nYou: and")

    job = Job.objects.get(id=first["id"])
    assert (job.state, job.text) == (Job.State.DONE, "Hello there\nYou:")
    assert Prompt.objects.get(id=prompt_id).waiting == 0
