"""A server's record stays the same size however many jobs it does, and holds no text."""

from __future__ import annotations

import random

import pytest
from django.db import connection

from generations.models import Job
from servers.records import (
    _ENTRY,
    RECENT_RESULTS,
    _record,
    delivered_sql,
    failed_sql,
    rating_sql,
    result_facts,
)
from servers.tests.volunteers import volunteer

pytestmark = pytest.mark.django_db(transaction=True)  # PostgreSQL: a commit per job

MANY = 100_000


def table_sizes() -> dict[str, int]:
    with connection.cursor() as cursor:
        sizes = {}
        for table in connection.introspection.table_names(cursor):
            # The ledger grows by design (two entries a job), the queue is purged: the rest.
            if table.startswith(("servers_", "stats_", "accounts_user", "accounts_balance")):
                cursor.execute(f"SELECT COUNT(*) FROM {connection.ops.quote_name(table)}")
                sizes[table] = cursor.fetchone()[0]
        return sizes


def test_the_record_is_bounded_after_100000_jobs():
    """Every way a job can end, 100,000 times, through the statements submit and the reaper
    run: no row more anywhere, counters within their window, the digests within their cut."""
    server = volunteer("busy").work(" a first result long enough to be compared").server
    before = table_sizes()
    rng = random.Random(26)
    for i in range(MANY):
        roll = rng.random()
        if roll < 0.9:
            text = f" result number {rng.randrange(10_000)} of a long day" if roll > 0.1 else ""
            facts = result_facts(
                text=text, tokens=12, seconds=1.0, model="Llama-3-70B", prompt=f"prompt {i}"
            )
            _record(server.pk, *delivered_sql(facts))
        else:
            _record(server.pk, *failed_sql(abandoned=roll < 0.95))
        if i % 10 == 0:
            _record(server.pk, *rating_sql(good=roll < 0.5))
    server.refresh_from_db()
    assert table_sizes() == before
    assert len(server.recent_results) == RECENT_RESULTS * _ENTRY
    assert all(len(entry) == _ENTRY - 1 for entry in server.recent_results.split(",")[:-1])
    window = 100  # RECORD_WINDOW_JOBS
    assert window * 0.99 < server.rec_jobs <= window
    assert 0 < server.rec_empty < server.rec_jobs
    assert server.rec_good + server.rec_bad <= 50  # RECORD_WINDOW_RATINGS


def test_real_jobs_add_no_rows_and_keep_no_text():
    busy = volunteer("busy")
    busy.work(" the first words of a story, and then some more")
    before = table_sizes()
    for i in range(200):
        busy.work(f" the {i}th story began, as stories do, at the start")
    assert table_sizes() == before  # the jobs and prompts are the queue's, purged with it
    server = busy.server
    assert "story" not in server.recent_results
    assert len(server.recent_results) == RECENT_RESULTS * _ENTRY
    assert Job.objects.filter(server=server.pk).count() == 201
