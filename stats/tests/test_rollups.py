"""Rollups: a day of synthetic traffic, purged as it ages, gives exact minute and day rows."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest

from generations.lifecycle import jobs_reap, prompts_purge
from generations.models import Job, Prompt
from servers.models import Server
from stats.models import DayRollup, MinuteRollup, RollupMark
from stats.rollups import live_counts, stats_rollup
from stats.tally import Tally

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 3, 2, tzinfo=UTC)
EXPIRY = timedelta(minutes=10)


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def make_day(user, server) -> dict[tuple[datetime, str], Tally]:
    """Store a day of prompts and jobs as the queue leaves them; return what each minute saw.

    Every 7th minute a prompt with n=2: its first job starts a few seconds to a minute later
    and is delivered, sometimes 3 minutes later (a late finish crossing minutes); its second
    job is faulted by the server or abandoned at its deadline.
    """
    expected: dict[tuple[datetime, str], Tally] = defaultdict(Tally)
    prompts, jobs = [], []
    for m in range(0, 24 * 60, 7):
        created = DAY + timedelta(minutes=m, seconds=10)
        model = "alpha" if m % 2 else "beta"
        first = created + timedelta(seconds=(m % 5) * 17)
        second = first + timedelta(seconds=40)
        done = first + timedelta(seconds=30 if m % 3 else 180)
        tokens = 1 + m % 40
        second_end = second + timedelta(seconds=20 if m % 4 else 150)
        prompt = Prompt(
            user=user, text="x", n=2, waiting=0, max_length=80, max_context_length=1024,
            sort_key=0, created=created, last_activity=max(done, second_end),
            expires_at=max(done, second_end) + EXPIRY, models=[model], any_model=False,
        )  # fmt: skip
        prompts.append(prompt)
        jobs.append(
            Job(prompt=prompt, server=server, model=model, state=Job.State.DONE, text="y",
                started=first, deadline=first + timedelta(seconds=150), finished=done,
                tokens=tokens)
        )  # fmt: skip
        faulted = m % 4 != 0
        jobs.append(
            Job(prompt=prompt, server=server, model=model,
                state=Job.State.FAULTED if faulted else Job.State.ABANDONED,
                started=second, deadline=second + timedelta(seconds=150), finished=second_end)
        )  # fmt: skip
        expected[(minute_of(created), "")].prompts += 1
        expected[(minute_of(first), model)].jobs += 1
        expected[(minute_of(second), model)].jobs += 1
        expected[(minute_of(done), model)].generations += 1
        expected[(minute_of(done), model)].tokens += tokens
        if faulted:
            expected[(minute_of(second_end), model)].faulted += 1
        else:
            expected[(minute_of(second_end), model)].abandoned += 1
        expected[(minute_of(first), model)].add_wait((first - created).total_seconds())
    Prompt.objects.bulk_create(prompts)
    Job.objects.bulk_create(jobs)
    return expected


@pytest.fixture
def server(bob) -> Server:
    return Server.objects.create(name="bob-1", owner=bob, models=["alpha", "beta"])


def rows_by_key(model_class=MinuteRollup, when: str = "minute") -> dict[tuple, Tally]:
    return {(getattr(r, when), r.model): Tally.of(r) for r in model_class.objects.all()}


def test_a_day_rolled_up_minute_by_minute_while_the_purge_runs_is_exact(alice, server):
    expected = make_day(alice, server)
    # The scheduler's life: every minute the rollup, then the purge.
    stats_rollup(now=DAY)  # the first run starts at the oldest row still there
    now = DAY
    while now < DAY + timedelta(hours=24, minutes=20):
        now += timedelta(minutes=1)
        stats_rollup(now=now + timedelta(seconds=3))
        prompts_purge(now=now + timedelta(seconds=4))

    assert not Prompt.objects.exists() and not Job.objects.exists()  # all purged...
    assert rows_by_key() == dict(expected)  # ...and every event counted, in its minute
    assert sum(t.generations for t in expected.values()) == 206


def test_a_repeated_run_counts_nothing_twice(alice, server):
    expected = make_day(alice, server)
    end = DAY + timedelta(hours=25)
    first = stats_rollup(now=end)
    assert first.rows == len(expected)
    again = stats_rollup(now=end)
    assert (again.minutes, again.rows) == (0, 0)
    assert rows_by_key() == dict(expected)


def test_minutes_within_the_lag_wait_for_the_next_run(alice, server):
    make_day(alice, server)
    stats_rollup(now=DAY + timedelta(minutes=7, seconds=50))  # the 7:10 prompt: 40 s ago
    assert RollupMark.objects.get().rolled_until == DAY + timedelta(minutes=6)
    minutes = set(MinuteRollup.objects.values_list("minute", flat=True))
    assert minutes == {DAY, DAY + timedelta(minutes=3)}  # the first prompt, its late finish

    stats_rollup(now=DAY + timedelta(minutes=9))
    assert DAY + timedelta(minutes=7) in set(MinuteRollup.objects.values_list("minute", flat=True))


def test_rows_older_than_30_days_fold_into_days(alice, server):
    expected = make_day(alice, server)
    stats_rollup(now=DAY + timedelta(hours=25))
    per_day: dict[tuple, Tally] = defaultdict(Tally)
    for (minute, model), tally in expected.items():
        per_day[(minute.date(), model)].add(tally)

    recent = MinuteRollup.objects.create(minute=DAY + timedelta(days=2), model="alpha", jobs=1)

    folded = stats_rollup(now=DAY + timedelta(days=31, hours=1)).folded

    assert folded == len(expected)
    assert not MinuteRollup.objects.filter(minute__lt=DAY + timedelta(days=1)).exists()
    assert rows_by_key(DayRollup, "day") == dict(per_day)
    assert MinuteRollup.objects.get() == recent  # within 30 days: kept by the minute
    assert set(DayRollup.objects.values_list("day", flat=True)) == {DAY.date()}
    # Folding again adds nothing; a later day folds into its own row.
    stats_rollup(now=DAY + timedelta(days=31, hours=2))
    assert rows_by_key(DayRollup, "day") == dict(per_day)


def test_no_text_is_read(alice, server, django_assert_max_num_queries):
    make_day(alice, server)
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as queries:
        live_counts(DAY)
    assert queries
    assert all('"text"' not in q["sql"] for q in queries.captured_queries)


def test_the_median_wait_is_estimated_inside_its_bucket():
    tally = Tally()
    for seconds in (0.5, 3, 4, 4.5, 40):  # buckets ≤1, ≤5 (×3), ≤60
        tally.add_wait(seconds)
    # The 2.5th of 5 waits lies in the (2, 5] bucket, half-way through its 3: 2 + 3 × 1.5/3.
    assert tally.median_wait() == 3.5
    assert Tally().median_wait() is None
    late = Tally()
    late.add_wait(4000)
    assert late.median_wait() == 1800  # beyond the last bound: the bound


def test_a_reaped_job_delivered_late_counts_as_both_in_their_minutes(alice, bob):
    """Through the queue's own services: pop, reap at the deadline, then a late delivery."""
    from generations.delivery import job_submit
    from generations.intake import GenerationRequest, prompt_create
    from generations.queue import jobs_claim
    from servers.services import Credentials

    start = datetime(2026, 3, 2, 9, 0, 5, tzinfo=UTC)
    server = Server.objects.create(
        name="bob-1", owner=bob, models=["alpha"], max_length=80, last_check_in=start
    )
    request = GenerationRequest(text="x", n=1, max_length=16, max_context_length=512)
    prompt_create(user=alice, request=request, now=start)
    job = jobs_claim(server=server, now=start + timedelta(seconds=20)).job
    reaped_at = job.deadline + timedelta(seconds=1)
    assert jobs_reap(now=reaped_at) == 1
    stats_rollup(now=reaped_at + timedelta(minutes=2))  # the reap is counted...
    late = reaped_at + timedelta(minutes=3)
    job_submit(job_id=job.id, credentials=Credentials(api_user=bob), text="abcd", now=late)
    stats_rollup(now=late + timedelta(minutes=2))  # ...and so is the delivery, later

    rows = rows_by_key()
    assert rows[(minute_of(start), "")].prompts == 1
    assert rows[(minute_of(start), "alpha")].jobs == 1
    assert rows[(minute_of(start), "alpha")].waits == 1
    assert rows[(minute_of(reaped_at), "alpha")].abandoned == 1
    delivered = rows[(minute_of(late), "alpha")]
    assert (delivered.generations, delivered.tokens) == (1, 1)
