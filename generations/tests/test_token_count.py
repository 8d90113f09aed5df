"""A server's own token count (`token_count` on both submit endpoints): paid when plausible."""

from __future__ import annotations

import logging

import pytest

from accounts.models import LedgerEntry
from generations.models import Job, reward_tokens

pytestmark = pytest.mark.django_db

V2_POP = "/api/v2/generate/text/pop"
V2_SUBMIT = "/api/v2/generate/text/submit"


@pytest.mark.parametrize(
    ("chars", "max_length", "reported", "paid", "trusted"),
    [
        (40, 16, None, 10, True),  # nothing reported: ceil(40 / 4)
        (40, 16, 7, 7, True),
        (40, 16, 5, 5, True),  # ceil(40 / 8): the lowest plausible
        (40, 16, 4, 10, False),  # fewer than one token per 8 characters
        (40, 100, 40, 40, True),  # one token per character: the highest plausible
        (40, 100, 41, 10, False),  # more tokens than characters
        (40, 16, 17, 10, False),  # more than the job asked for
        (400, 16, 16, 16, False),  # 25 characters a token: implausible (paid the same)
        (400, 16, 3, 16, False),  # own count capped at max_length
        (0, 16, 0, 0, True),
        (0, 16, 1, 0, False),
    ],
)
def test_reward_tokens(chars, max_length, reported, paid, trusted):
    tokens, why = reward_tokens("x" * chars, max_length, reported)
    assert tokens == paid
    assert (why is None) == trusted


def _ledger(job_id: str) -> list[tuple[str, int]]:
    entries = LedgerEntry.objects.filter(job_id=job_id).order_by("kind")
    return [(entry.kind, entry.tokens) for entry in entries]


@pytest.fixture
def job_id(submit_prompt, pop):
    submit_prompt(params={"n": 1, "max_length": 16}, username="alice")
    return pop().json()["id"]


def test_original_submit_pays_a_plausible_token_count(submit_generation, job_id):
    response = submit_generation(job_id, "x" * 40, token_count=7)

    assert response.json() == {"reward": 7}
    assert Job.objects.get(id=job_id).tokens == 7
    assert _ledger(job_id) == [("contribution", 7), ("usage", 7)]


def test_original_submit_counts_itself_when_the_count_is_implausible(
    submit_generation, job_id, caplog
):
    caplog.set_level(logging.INFO, logger="generations")
    response = submit_generation(job_id, "secret words " * 3, token_count=900)

    assert response.json() == {"reward": 10}
    assert _ledger(job_id) == [("contribution", 10), ("usage", 10)]
    [line] = [message for message in caplog.messages if "token_count not used" in message]
    assert "reported 900 is outside 5..16 for 39 characters" in line
    assert "secret" not in caplog.text


@pytest.mark.parametrize("bad", [-1, 1.5, "7", True])
def test_original_submit_refuses_a_token_count_that_is_not_a_whole_number(
    submit_generation, job_id, bad
):
    response = submit_generation(job_id, "x" * 40, token_count=bad)

    assert response.status_code == 400
    assert "token_count" in response.json()["errors"]
    assert Job.objects.get(id=job_id).state == Job.State.PROCESSING


def test_v2_submit_pays_a_plausible_token_count_and_not_an_implausible_one(
    api, submit_prompt, register
):
    _, key = register("dave")
    submit_prompt(params={"n": 2, "max_length": 16}, username="alice")
    headers = {"HTTP_APIKEY": key}
    ids = []
    for _ in range(2):
        popped = api.post(V2_POP, {"name": "dave-1", "models": ["m"]}, format="json", **headers)
        ids.append(popped.json()["id"])

    plausible = {"id": ids[0], "generation": "x" * 40, "token_count": 6}
    implausible = {"id": ids[1], "generation": "x" * 40, "token_count": 2}
    assert api.post(V2_SUBMIT, plausible, format="json", **headers).json() == {"reward": 6.0}
    assert api.post(V2_SUBMIT, implausible, format="json", **headers).json() == {"reward": 10.0}
    assert _ledger(ids[0]) == [("contribution", 6), ("usage", 6)]
    assert _ledger(ids[1]) == [("contribution", 10), ("usage", 10)]


def test_the_sqlite_expression_of_the_reward_agrees_with_the_rule():
    """SQLite's submit works the reward out in its one statement (generations/stores/sqlite.py,
    `accept_before_lookup`)."""
    import sqlite3

    from generations.models import reward_tokens_sql

    database = sqlite3.connect(":memory:")
    database.execute("CREATE TABLE prompt (max_length INTEGER)")
    cases = [
        (chars, max_length, reported)
        for chars in (0, 1, 3, 4, 5, 7, 8, 9, 63, 64, 65, 400, 1000)
        for max_length in (1, 2, 16, 80, 512)
        for reported in (None, 0, 1, 2, 5, 8, 9, 15, 16, 17, 79, 80, 81, 200, 10**6)
    ]
    for chars, max_length, reported in cases:
        database.execute("DELETE FROM prompt")
        database.execute("INSERT INTO prompt VALUES (?)", [max_length])
        text = "x" * chars
        expression, params = reward_tokens_sql(text, reported, "(SELECT {} FROM prompt)")
        sql = f"SELECT {expression.replace('%s', '?')}"
        (paid,) = database.execute(sql, params).fetchone()
        assert paid == reward_tokens(text, max_length, reported)[0], (chars, max_length, reported)


# --- The prompt as the bridge sent it: prompt_tokens and prompt_trimmed -----------------------


def test_original_submit_stores_the_prompts_tokens_and_what_was_trimmed(submit_generation, job_id):
    response = submit_generation(job_id, "x" * 40, prompt_tokens=500, prompt_trimmed=4321)

    assert response.status_code == 200
    job = Job.objects.get(id=job_id)
    assert (job.state, job.prompt_tokens, job.prompt_trimmed) == (Job.State.DONE, 500, 4321)


def test_a_submit_without_them_stores_unknown_and_nothing_trimmed(submit_generation, job_id):
    submit_generation(job_id, "x" * 40)

    job = Job.objects.get(id=job_id)
    assert (job.prompt_tokens, job.prompt_trimmed) == (None, 0)


@pytest.mark.parametrize(
    "bad", [{"prompt_tokens": -1}, {"prompt_trimmed": 1.5}, {"prompt_tokens": 2**31}]
)
def test_submit_refuses_prompt_counts_that_are_not_bounded_whole_numbers(
    submit_generation, job_id, bad
):
    response = submit_generation(job_id, "x" * 40, **bad)

    assert response.status_code == 400
    assert set(response.json()["errors"]) == set(bad)
    assert Job.objects.get(id=job_id).state == Job.State.PROCESSING


def test_v2_submit_stores_the_prompts_tokens_and_what_was_trimmed(api, submit_prompt, register):
    _, key = register("dave")
    submit_prompt(params={"n": 1, "max_length": 16}, username="alice")
    headers = {"HTTP_APIKEY": key}
    popped = api.post(V2_POP, {"name": "dave-1", "models": ["m"]}, format="json", **headers)
    job_id = popped.json()["id"]

    body = {"id": job_id, "generation": "x" * 40, "prompt_tokens": 12, "prompt_trimmed": 0}
    assert api.post(V2_SUBMIT, body, format="json", **headers).status_code == 200
    job = Job.objects.get(id=job_id)
    assert (job.prompt_tokens, job.prompt_trimmed) == (12, 0)
