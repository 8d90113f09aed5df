"""Roll the queue's job rows up into per-minute rows before the purge deletes them.

A prompt and its jobs live at least PROMPT_EXPIRY_SECONDS (10 minutes) after their last
activity, and the rollup runs every minute, so it reads every job while it still exists. It
keeps a watermark (`RollupMark`): each run counts the events of the whole minutes between the
watermark and LAG ago, writes their rows and moves the watermark, in one transaction. A run
that is repeated, or two that overlap, count nothing twice (the second waits for the first's
lock and finds the minutes done). An event is counted in the minute it happened: a job in the
minute it was popped (`jobs`) and in the minute it finished (`generations`, `tokens`,
`faulted`, `abandoned`), a prompt in the minute it was created and its wait in the minute its
first job started. A job that finishes late is therefore counted when it finishes; one that
was abandoned and then delivered late counts once as abandoned and once as delivered, as
both happened. No text is read.

Per-minute rows older than MINUTE_RETENTION are folded into per-day rows, so that both
tables stay small: about 1,440 rows a day per model for 30 days, then one row a day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from django.db import transaction
from django.db.models import Count, Min, Q, Sum
from django.db.models.functions import TruncMinute
from django.utils import timezone

from generations.models import Job, Prompt
from stats.models import DayRollup, MinuteRollup, RollupMark
from stats.tally import SCALARS, Tally

# A request stamps its `now` before its transaction commits: a minute is counted only once
# this much time has passed since its end, so that no late commit lands in a counted minute.
LAG = timedelta(seconds=60)
MINUTE_RETENTION = timedelta(days=30)
COLUMNS = (*SCALARS, "wait_seconds", "wait_buckets")

Key = tuple[datetime, str]  # (start of the minute, model)


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def live_counts(start: datetime, end: datetime | None = None) -> dict[Key, Tally]:
    """Per minute and model, the events in [start, end) read from the live prompts and jobs.

    Five aggregate queries over the jobs table, which holds only the last minutes of traffic.
    """
    counts: dict[Key, Tally] = {}

    def at(moment: datetime, model: str) -> Tally:
        return counts.setdefault((floor_minute(moment), model), Tally())

    def within(name: str) -> Q:
        span = Q(**{f"{name}__gte": start})
        return span & Q(**{f"{name}__lt": end}) if end else span

    created = Prompt.objects.filter(within("created")).annotate(at=TruncMinute("created"))
    for minute, n in created.values_list("at").annotate(Count("id")).order_by():
        at(minute, "").prompts += n
    popped = Job.objects.filter(within("started")).annotate(at=TruncMinute("started"))
    for minute, model, n in popped.values_list("at", "model").annotate(Count("id")).order_by():
        at(minute, model).jobs += n
    ended = Job.objects.filter(within("finished")).annotate(at=TruncMinute("finished"))
    rows = ended.values_list("at", "model", "state").annotate(Count("id"), Sum("tokens"))
    for minute, model, state, n, tokens in rows.order_by():
        tally = at(minute, model)
        if state == Job.State.DONE:
            tally.generations += n
            tally.tokens += tokens or 0
        elif state == Job.State.FAULTED:
            tally.faulted += n
        elif state == Job.State.ABANDONED:
            tally.abandoned += n
    for minute, model, wait in _first_waits(within("first")):
        at(minute, model).add_wait(wait)
    return counts


def _first_waits(window: Q) -> list[tuple[datetime, str, float]]:
    """(first start, its model, seconds since the prompt) of prompts first served in window."""
    firsts = Job.objects.values("prompt_id").annotate(first=Min("started")).filter(window)
    jobs = (
        Job.objects.filter(prompt_id__in=firsts.values("prompt_id"))
        .order_by("prompt_id", "started", "id")
        .values_list("prompt_id", "started", "model", "prompt__created")
    )
    waits, seen = [], set()
    for prompt_id, started, model, created in jobs:
        if prompt_id not in seen:
            seen.add(prompt_id)
            waits.append((started, model, (started - created).total_seconds()))
    return waits


@dataclass(frozen=True)
class RollupResult:
    minutes: int  # minutes counted by this run
    rows: int  # per-minute rows written
    folded: int  # per-minute rows folded into per-day rows


def stats_rollup(*, now: datetime | None = None) -> RollupResult:
    """Count the minutes since the watermark up to LAG ago, then fold rows past retention."""
    now = now or timezone.now()
    end = floor_minute(now - LAG)
    with transaction.atomic():
        mark = RollupMark.objects.select_for_update().filter(pk=1).first()
        start = mark.rolled_until if mark else _earliest_event(default=end)
        minutes = rows = 0
        if start < end:
            counts = live_counts(start, end)
            rows = _write_minutes(counts)
            minutes = int((end - start).total_seconds() // 60)
        RollupMark.objects.update_or_create(pk=1, defaults={"rolled_until": max(start, end)})
        folded = _fold_days(now)
    return RollupResult(minutes=minutes, rows=rows, folded=folded)


def _earliest_event(*, default: datetime) -> datetime:
    """The first run starts with the oldest prompt or job still in the database."""
    moments = [
        Prompt.objects.aggregate(m=Min("created"))["m"],
        Job.objects.aggregate(m=Min("started"))["m"],
    ]
    found = [m for m in moments if m is not None]
    return floor_minute(min(found)) if found else default


def _write_minutes(counts: dict[Key, Tally]) -> int:
    rows = [
        MinuteRollup(minute=minute, model=model, **t.fields())
        for (minute, model), t in counts.items()
    ]
    # Upsert: the watermark means these minutes were never written, but a mark reset by hand
    # must not fail the task; the recount replaces the old rows.
    MinuteRollup.objects.bulk_create(
        rows, update_conflicts=True, unique_fields=["minute", "model"], update_fields=COLUMNS
    )
    return len(rows)


def _fold_days(now: datetime) -> int:
    """Add the per-minute rows of days that ended MINUTE_RETENTION ago to per-day rows."""
    cutoff = datetime.combine((now - MINUTE_RETENTION).date(), time.min, tzinfo=UTC)
    old = MinuteRollup.objects.filter(minute__lt=cutoff)
    days: dict[tuple, Tally] = {}
    folded = 0
    for row in old.order_by("minute"):
        key = (row.minute.astimezone(UTC).date(), row.model)
        days.setdefault(key, Tally()).add(Tally.of(row))
        folded += 1
    if not days:
        return 0
    existing = DayRollup.objects.filter(day__in={day for day, _ in days})
    for row in existing:
        if (row.day, row.model) in days:
            days[(row.day, row.model)].add(Tally.of(row))
    DayRollup.objects.bulk_create(
        [DayRollup(day=day, model=model, **t.fields()) for (day, model), t in days.items()],
        update_conflicts=True,
        unique_fields=["day", "model"],
        update_fields=COLUMNS,
    )
    old.delete()
    return folded
