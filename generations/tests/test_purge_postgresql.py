"""What PostgreSQL keeps of a purged prompt, read from its own files (README "Privacy")."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection

from generations.lifecycle import prompts_purge
from generations.models import Job, Prompt
from generations.vacuum import vacuum_after_purge

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def superuser_postgresql(transactional_db: None) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's files")
    with connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not cursor.fetchone()[0]:
            pytest.skip("reading PostgreSQL's files needs a superuser")


def table_files_containing(marker: str) -> list[str]:
    """The tables (with their TOAST tables) whose data files on disk hold `marker`."""
    found = []
    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")  # write the tables' pages from memory to their files
        for model in (Prompt, Job):
            table = model._meta.db_table
            cursor.execute(
                "SELECT c.relname, pg_relation_filepath(c.oid) FROM pg_class c "
                "WHERE c.oid = %s::regclass OR c.oid = "
                "(SELECT reltoastrelid FROM pg_class WHERE oid = %s::regclass)",
                [table, table],
            )
            for name, path in cursor.fetchall():
                cursor.execute(
                    "SELECT position(convert_to(%s, 'UTF8') IN pg_read_binary_file(%s)) > 0",
                    [marker, path],
                )
                if cursor.fetchone()[0]:
                    found.append(name)
    return found


def wal_contains(marker: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT bool_or(position(convert_to(%s, 'UTF8') IN "
            "pg_read_binary_file('pg_wal/' || name)) > 0) FROM pg_ls_waldir() "
            "WHERE name ~ '^[0-9A-F]{24}$'",
            [marker],
        )
        return bool(cursor.fetchone()[0])


def queue_with_marker(submit_prompt, pop, submit_generation, marker: str) -> None:
    submit_prompt(f"Once upon a time {marker} lived", username="alice")
    submit_generation(pop().json()["id"], f" a {marker} generated")


def test_a_large_purge_vacuums_and_the_tables_files_forget_the_text(
    superuser_postgresql, settings, submit_prompt, pop, submit_generation
):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "PURGE_VACUUM_PROMPTS": 1}
    marker = f"marker-{uuid.uuid4().hex}"
    queue_with_marker(submit_prompt, pop, submit_generation, marker)
    # The search finds what is there: otherwise "not found" below would prove nothing.
    assert set(table_files_containing(marker)) == {"generations_prompt", "generations_job"}

    prompts_purge(now=Prompt.objects.get().expires_at)

    # Nothing live was left: VACUUM cut the emptied pages off the end of both files.
    assert table_files_containing(marker) == []
    # The write-ahead log keeps its copy until PostgreSQL recycles the segment.
    assert wal_contains(marker)


def test_without_vacuum_a_purged_prompt_stays_in_the_tables_file(
    superuser_postgresql, settings, submit_prompt, pop, submit_generation
):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "PURGE_VACUUM_PROMPTS": 0}
    marker = f"marker-{uuid.uuid4().hex}"
    queue_with_marker(submit_prompt, pop, submit_generation, marker)

    prompts_purge(now=Prompt.objects.get().expires_at)

    assert Prompt.objects.count() == 0
    assert "generations_prompt" in table_files_containing(marker)  # a dead tuple, on disk


def test_small_purges_leave_the_tables_to_autovacuum(superuser_postgresql, settings):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "PURGE_VACUUM_PROMPTS": 1000}

    assert not vacuum_after_purge(999)
    assert vacuum_after_purge(1000)
