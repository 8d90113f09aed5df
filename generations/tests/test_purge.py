"""The purge: expired prompts go with their jobs and every byte of their text; the ledger stays."""

import logging
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from django.db import connection

from accounts.models import LedgerEntry
from accounts.selectors import user_totals
from generations import lifecycle
from generations.lifecycle import prompts_purge
from generations.models import Job, Prompt, PromptModel
from generations.tasks import purge_expired_prompts

START = datetime.fromisoformat("2030-01-01 00:00:00+00:00")


def at(time_machine, minutes: float) -> datetime:
    """Move the clock to START + `minutes` and return that moment."""
    moment = START + timedelta(minutes=minutes)
    time_machine.move_to(moment, tick=False)
    return moment


def tables_containing(marker: str) -> list[str]:
    """Every `table.column` whose stored value contains `marker`, in all tables of the database."""
    hits = []
    quote = connection.ops.quote_name
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            for column in connection.introspection.get_table_description(cursor, table):
                cursor.execute(
                    f"SELECT COUNT(*) FROM {quote(table)} "
                    f"WHERE CAST({quote(column.name)} AS TEXT) LIKE %s",
                    [f"%{marker}%"],
                )
                if cursor.fetchone()[0]:
                    hits.append(f"{table}.{column.name}")
    return hits


def files_containing(marker: str) -> list[str]:
    """The SQLite database file and its write-ahead log, if their raw bytes hold `marker`."""
    path = Path(connection.settings_dict["NAME"])
    return [
        file.name
        for file in (path, path.with_name(path.name + "-wal"))
        if file.exists() and marker.encode() in file.read_bytes()
    ]


@pytest.mark.django_db
def test_purge_removes_exactly_the_expired_prompts_and_keeps_the_ledger(
    api, time_machine, submit_prompt, pop, submit_generation
):
    at(time_machine, 0)
    expired = submit_prompt("old", params={"n": 2, "max_length": 16}, models=["tiny-llm"])
    submit_generation(pop().json()["id"], " done")
    pop(name="bob-2")  # still processing when its prompt expires
    at(time_machine, 5)
    live = submit_prompt("new", username="alice")
    submit_generation(pop().json()["id"], " kept")
    ledger = list(LedgerEntry.objects.order_by("id").values())
    totals = user_totals()

    result = prompts_purge(now=at(time_machine, 10))

    assert (result.prompts, result.jobs) == (1, 2)
    assert list(Prompt.objects.values_list("id", flat=True)) == [uuid.UUID(live)]
    assert not Job.objects.filter(prompt_id=expired).exists()
    assert not PromptModel.objects.filter(prompt_id=expired).exists()
    assert Job.objects.filter(prompt_id=live).count() == 1
    assert list(LedgerEntry.objects.order_by("id").values()) == ledger
    assert user_totals() == totals
    assert api.get(f"/generate/prompt/{live}").json()["generations"] == [" kept"]


@pytest.mark.django_db
def test_an_expired_prompt_is_gone_for_every_read_before_the_purge(
    api, time_machine, submit_prompt, pop, submit_generation
):
    at(time_machine, 0)
    prompt_id = submit_prompt(params={"n": 2, "max_length": 16})
    job_id = pop().json()["id"]
    at(time_machine, 10)

    assert api.get(f"/generate/prompt/{prompt_id}").json()["rc"] == "RequestNotFound"
    assert api.delete(f"/generate/prompt/{prompt_id}").json()["rc"] == "RequestNotFound"
    assert pop().json()["id"] is None
    assert submit_generation(job_id, "too late").json()["rc"] == "InvalidJobID"
    assert Prompt.objects.filter(id=prompt_id).exists()  # the purge has not run yet
    assert not LedgerEntry.objects.exists()


@pytest.mark.django_db
def test_a_polled_prompt_outlives_ten_minutes_and_an_unpolled_one_does_not(
    api, time_machine, submit_prompt
):
    at(time_machine, 0)
    polled, forgotten = submit_prompt("polled"), submit_prompt("forgotten")
    for minute in (9, 18, 27):
        at(time_machine, minute)
        assert api.get(f"/generate/prompt/{polled}").status_code == 200

    prompts_purge(now=at(time_machine, 30))

    assert list(Prompt.objects.values_list("id", flat=True)) == [uuid.UUID(polled)]
    assert api.get(f"/generate/prompt/{forgotten}").json()["rc"] == "RequestNotFound"


@pytest.mark.django_db
def test_pops_and_submits_are_activity_too(time_machine, submit_prompt, pop, submit_generation):
    at(time_machine, 0)
    popped = submit_prompt("popped", params={"n": 2, "max_length": 16})
    at(time_machine, 9)
    job_id = pop().json()["id"]
    at(time_machine, 18)
    submit_generation(job_id, " text")

    prompts_purge(now=at(time_machine, 27))

    assert Prompt.objects.filter(id=popped).exists()
    prompts_purge(now=at(time_machine, 28.5))
    assert not Prompt.objects.exists()


@pytest.mark.django_db
def test_a_backlog_is_purged_in_several_batches(monkeypatch, time_machine, submit_prompt):
    monkeypatch.setattr(lifecycle, "PURGE_BATCH", 2)
    at(time_machine, 0)
    for i in range(5):
        submit_prompt(f"prompt {i}", models=["a", "b"])

    result = prompts_purge(now=at(time_machine, 11))

    assert result.prompts == 5
    assert not Prompt.objects.exists()
    assert not PromptModel.objects.exists()


@pytest.mark.django_db
def test_the_purge_task_reports_and_logs_one_line_without_text(
    caplog, time_machine, submit_prompt, pop
):
    at(time_machine, 0)
    submit_prompt("a secret prompt")
    pop()
    at(time_machine, 11)

    with caplog.at_level(logging.INFO, logger="generations.tasks"):
        summary = purge_expired_prompts()

    assert summary == "purged 1 expired prompts with 1 jobs"
    assert [r.getMessage() for r in caplog.records if r.name == "generations.tasks"] == [summary]
    assert "secret" not in caplog.text


@pytest.mark.django_db(transaction=True)
def test_a_purged_prompt_leaves_no_trace_in_the_database(
    api, submit_prompt, pop, submit_generation
):
    marker = f"marker-{uuid.uuid4().hex}"
    prompt_id = submit_prompt(
        f"Once upon a time {marker} lived",
        params={"n": 1, "max_length": 16, "stop_sequence": [f"{marker}-stop"]},
        username="alice",
    )
    submit_generation(pop().json()["id"], f" a {marker} generated")
    api.get(f"/generate/prompt/{prompt_id}")
    sqlite = connection.vendor == "sqlite"
    # The searches find what is there: otherwise "no hits" below would prove nothing.
    assert {"generations_prompt.text", "generations_prompt.params", "generations_job.text"} <= set(
        tables_containing(marker)
    )
    assert not sqlite or files_containing(marker)

    result = prompts_purge(now=Prompt.objects.get().expires_at)

    assert result.prompts == 1
    assert tables_containing(marker) == []
    if sqlite:
        assert files_containing(marker) == []
    assert LedgerEntry.objects.filter(kind="usage", user__username="alice").count() == 1
