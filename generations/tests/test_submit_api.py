"""POST /generate/submit: exactly once, paid in the same transaction, only by the owner."""

import uuid

import pytest

from accounts.models import LedgerEntry
from generations.models import Job, Prompt
from servers.models import Server

pytestmark = pytest.mark.django_db


@pytest.fixture
def job_id(submit_prompt, pop):
    submit_prompt(params={"n": 1, "max_length": 16}, username="alice")
    return pop().json()["id"]


def test_submit_pays_the_tokens(submit_generation, job_id):
    response = submit_generation(job_id, "x" * 21)

    assert response.status_code == 200
    assert response.json() == {"reward": 6}
    job = Job.objects.get(id=job_id)
    assert (job.state, job.text, job.tokens) == (Job.State.DONE, "x" * 21, 6)
    entries = LedgerEntry.objects.filter(job_id=job.id).order_by("kind")
    assert [(e.kind, e.user.username, e.tokens, e.kudos) for e in entries] == [
        ("contribution", "bob", 6, 6),
        ("usage", "alice", 6, -6),
    ]
    server = Server.objects.get()
    assert (server.tokens_generated, server.requests_fulfilled) == (6, 1)
    assert server.speed > 0
    assert server.latest_performance().endswith(" seconds per token")


@pytest.mark.parametrize(
    ("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2), ("y" * 1000, 16)]
)
def test_tokens_are_a_quarter_of_the_characters_capped_at_max_length(
    submit_generation, job_id, text, tokens
):
    assert submit_generation(job_id, text).json() == {"reward": tokens}


def test_a_second_submit_is_refused_and_pays_nothing(submit_generation, job_id):
    submit_generation(job_id, "first")

    response = submit_generation(job_id, "second")

    assert response.status_code == 400
    assert "already submitted" in response.json()["message"]
    assert response.json()["rc"] == "DuplicateGen"
    assert Job.objects.get(id=job_id).text == "first"
    assert LedgerEntry.objects.count() == 2


def test_unknown_job_is_404(submit_generation, bob):
    response = submit_generation(str(uuid.uuid4()))

    assert response.status_code == 404
    assert response.json()["rc"] == "InvalidJobID"


def test_wrong_password_is_401_and_changes_nothing(submit_generation, job_id):
    response = submit_generation(job_id, password="not-bobs")

    assert response.status_code == 401
    assert Job.objects.get(id=job_id).state == Job.State.PROCESSING
    assert not LedgerEntry.objects.exists()


def test_missing_password_is_401(api, job_id):
    response = api.post("/generate/submit", {"id": job_id, "generation": "x"}, format="json")

    assert response.status_code == 401
    assert response.json()["rc"] == "CredentialsRequired"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"id": "nope"}, "id"),
        ({"id": None}, "id"),
        ({"generation": None}, "generation"),
        ({"generation": 12}, "generation"),
        ({"state": "exploded"}, "state"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_submit_refuses_bad_input(api, job_id, body, field):
    body = {"id": job_id, "password": "s3rver-pass", "generation": "x", **body}

    response = api.post("/generate/submit", body, format="json")

    assert response.status_code == 400
    assert field in response.json()["errors"]
    assert Job.objects.get(id=job_id).state == Job.State.PROCESSING


def test_nul_characters_are_stored_as_replacement_characters(submit_generation, job_id):
    submit_generation(job_id, "a\x00b")

    assert Job.objects.get(id=job_id).text == "a\ufffdb"


def test_faulted_gives_the_slot_back_and_pays_nothing(submit_generation, job_id, pop):
    response = submit_generation(job_id, "", state="faulted")

    assert response.json() == {"reward": 0}
    prompt = Job.objects.get(id=job_id).prompt
    assert (prompt.waiting, prompt.faulted_jobs) == (1, 1)
    assert not LedgerEntry.objects.exists()
    assert pop(name="bob-2").json()["id"] is not None


def test_the_third_failure_faults_the_prompt(api, submit_generation, job_id, pop):
    prompt_id = Job.objects.get(id=job_id).prompt_id
    submit_generation(job_id, "", state="faulted")
    submit_generation(pop().json()["id"], "", state="faulted")
    submit_generation(pop().json()["id"], "", state="faulted")

    status = api.get(f"/generate/prompt/{prompt_id}").json()

    assert Prompt.objects.get(id=prompt_id).state == Prompt.State.FAULTED
    assert (status["faulted"], status["done"], status["restarted"], status["waiting"]) == (
        True,
        True,
        3,
        0,
    )
    assert pop().json()["id"] is None


def test_submit_costs_a_few_queries(submit_generation, job_id, django_assert_max_num_queries):
    with django_assert_max_num_queries(12):
        assert submit_generation(job_id).status_code == 200


@pytest.mark.django_db(transaction=True)  # the test's own transaction would hide the point
def test_a_password_to_hash_is_checked_before_anything_is_written(
    submit_generation, job_id, monkeypatch
):
    """SQLite accepts a job and reads its owner in one statement, then checks the password:
    one that must be hashed (not verified a moment ago) is checked outside that transaction,
    which would otherwise hold the database's write lock for the length of a hash."""
    from django.core.cache import cache
    from django.db import connection

    from accounts import identity

    hashed_in_a_transaction = []
    verified = identity.guard.password_verified

    def watched(*args):
        hashed_in_a_transaction.append(connection.in_atomic_block)
        return verified(*args)

    monkeypatch.setattr(identity.guard, "password_verified", watched)
    cache.clear()  # the pop's verification is forgotten

    response = submit_generation(job_id)

    assert response.status_code == 200
    assert hashed_in_a_transaction == [False]
    assert Job.objects.get(id=job_id).state == Job.State.DONE
    assert LedgerEntry.objects.filter(job_id=job_id).count() == 2
