"""The hot paths stay a few statements (issue 17): create, pop, submit, status, idle pop.

Counted: what a request sends that reads or writes rows (not BEGIN and COMMIT), one execute
each: a round trip. PostgreSQL writes a submit in one statement (a data-modifying CTE), and
sends a create's lock of the account with its INSERT; SQLite has no data-modifying CTEs.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conftest import SERVER_PASSWORD

# Real transactions, as in production: inside a test's transaction every atomic block would
# add a SAVEPOINT and its RELEASE.
pytestmark = pytest.mark.django_db(transaction=True)


# Transaction control is not counted: it reads and writes no rows.
_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def _statements(call) -> list[str]:
    """The statements a request sent that read or write rows."""
    with CaptureQueriesContext(connection) as captured:
        response = call()
    assert response.status_code in (200, 202), response.json()
    sent = [query["sql"] for query in captured.captured_queries]
    return [sql[:60] for sql in sent if not sql.startswith(_CONTROL)]


def _expect(sqlite: int, postgresql: int) -> int:
    return sqlite if connection.vendor == "sqlite" else postgresql


@pytest.fixture
def key(register):
    return register("carol")[1]


@pytest.fixture
def warm(pop, api, key):
    """bob's server has popped once (it exists, its check-in is fresh) and carol's key was
    used a moment ago (its `last_used` is written about once a minute)."""
    pop()
    api.get("/api/v2/find_user", HTTP_APIKEY=key)


def test_create_is_one_insert_after_the_key(api, key, warm):
    body = {"prompt": "Hello", "params": {"max_length": 16}}

    sent = _statements(lambda: api.post("/generate/prompt", body, format="json", HTTP_APIKEY=key))

    # The key's lookup; the INSERT that also checks the concurrency and reads the balance
    # (on PostgreSQL sent with the lock of the user's row, two statements in one round trip).
    assert len(sent) == 2, sent


def test_create_with_models_adds_their_rows_on_sqlite_only(api, key, warm):
    body = {"prompt": "Hello", "params": {"max_length": 16}, "models": ["tiny-llm"]}

    sent = _statements(lambda: api.post("/generate/prompt", body, format="json", HTTP_APIKEY=key))

    assert len(sent) == _expect(sqlite=3, postgresql=2), sent


def test_pop_with_work_is_a_lookup_a_claim_and_the_job(submit_prompt, pop, warm):
    submit_prompt()

    sent = _statements(pop)

    # The server with its owner, the claim, the job's INSERT (PostgreSQL: in one statement).
    assert len(sent) == _expect(sqlite=3, postgresql=2), sent


def test_an_idle_pop_asked_again_is_one_lookup(pop, warm):
    pop()  # nothing to serve: the answer is remembered for this server's profile

    sent = _statements(pop)

    assert len(sent) == 1, sent
    assert pop().json() == {"id": None, "skipped": {"model": 0, "max_content_length": 0,
                                                    "max_length": 0}}  # fmt: skip


def test_a_new_prompt_ends_the_remembered_idle_answer(submit_prompt, pop, warm):
    pop()
    submit_prompt()

    assert pop().json()["id"] is not None


def test_submit_is_three_statements_at_most(submit_prompt, pop, submit_generation, warm):
    submit_prompt()
    job_id = pop().json()["id"]

    sent = _statements(lambda: submit_generation(job_id))

    # PostgreSQL: the job with its prompt and server's owner, then one statement for the job,
    # the ledger pair and the server's counters. SQLite (no data-modifying CTEs): the job's
    # acceptance that returns its prompt and owner, the ledger pair, the server's counters.
    assert len(sent) == _expect(sqlite=3, postgresql=2), sent


def test_status_is_one_statement(api, submit_prompt, pop, warm):
    prompt_id = submit_prompt()
    pop()

    sent = _statements(lambda: api.get(f"/generate/prompt/{prompt_id}"))

    assert len(sent) == 1, sent


def test_v2_status_reads_prompt_jobs_and_queue_in_one_statement(api, submit_prompt, pop, warm):
    prompt_id = submit_prompt()
    api.get(f"/api/v2/generate/text/status/{prompt_id}")  # the active servers are read once

    sent = _statements(lambda: api.get(f"/api/v2/generate/text/status/{prompt_id}"))

    assert len(sent) == 1, sent


def test_a_server_submits_with_its_password(submit_prompt, pop, submit_generation, warm):
    submit_prompt()
    job_id = pop().json()["id"]

    response = submit_generation(job_id, password=SERVER_PASSWORD)

    assert response.json() == {"reward": 3}
