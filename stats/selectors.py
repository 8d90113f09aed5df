"""Reading the statistics: rollup rows before the watermark plus the live rows after it.

The rollup rows are read only below the watermark read first, and the live rows from that
watermark on, so a rollup committing meanwhile neither hides nor doubles a minute.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta

from django.core.cache import cache
from django.db.models import Sum
from django.utils import timezone

from stats.models import DayRollup, MinuteRollup, RollupMark
from stats.rollups import COLUMNS, Key, floor_minute, live_counts
from stats.tally import SCALARS, Tally

EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
# Rollup sums change only when the watermark moves: cached per watermark and window.
SUMS_CACHE_SECONDS = 120


class StatsReader:
    """One consistent view of the statistics at `now`: windows, per-minute series, totals."""

    def __init__(self, now: datetime | None = None) -> None:
        self.now = now or timezone.now()
        self.mark = RollupMark.objects.values_list("rolled_until", flat=True).first()
        self.tail: dict[Key, Tally] = live_counts(self.mark or EPOCH)

    def window(self, since: datetime | None) -> dict[str, Tally]:
        """Per model, the scalar counts from `since` (None: all time) to now.

        The rollup rows count whole minutes: a window starts at the minute `since` falls in.
        Waits are left out here (see `series`).
        """
        start = floor_minute(since) if since else None
        per_model: dict[str, Tally] = defaultdict(Tally)
        for model, tally in self._rolled_sums(start).items():
            per_model[model].add(tally)
        for (minute, model), tally in self.tail.items():
            if start is None or minute >= start:
                per_model[model].add(tally)
        return dict(per_model)

    def series(self, since: datetime) -> dict[datetime, Tally]:
        """Every model together, minute by minute from `since`, waits included."""
        start = floor_minute(since)
        minutes: dict[datetime, Tally] = defaultdict(Tally)
        for minute, tally in self._rolled_minutes(start).items():
            minutes[minute].add(tally)
        for (minute, _model), tally in self.tail.items():
            if minute >= start:
                minutes[minute].add(tally)
        return dict(minutes)

    def _rolled_minutes(self, start: datetime) -> dict[datetime, Tally]:
        """Every model together, per minute from `start` up to the watermark (cached)."""
        if self.mark is None:
            return {}
        key = f"stats:minutes:{self.mark.isoformat()}:{start.isoformat()}"
        minutes = cache.get(key)
        if minutes is None:
            minutes = defaultdict(Tally)
            rows = MinuteRollup.objects.filter(minute__gte=start, minute__lt=self.mark)
            for minute, *values in rows.values_list("minute", *COLUMNS):
                minutes[minute].add(Tally(**dict(zip(COLUMNS, values, strict=True))))
            minutes = dict(minutes)
            cache.set(key, minutes, SUMS_CACHE_SECONDS)
        return minutes

    def _rolled_sums(self, start: datetime | None) -> dict[str, Tally]:
        if self.mark is None:
            return {}
        key = f"stats:sums:{self.mark.isoformat()}:{start.isoformat() if start else 'all'}"
        sums = cache.get(key)
        if sums is None:
            sums = _sums(MinuteRollup.objects.filter(minute__lt=self.mark), start)
            if start is None or start < self.now - timedelta(days=30):
                days = DayRollup.objects.all()
                if start is not None:
                    days = days.filter(day__gte=start.date())
                for model, tally in _sums(days, None).items():
                    sums.setdefault(model, Tally()).add(tally)
            cache.set(key, sums, SUMS_CACHE_SECONDS)
        return sums


def _sums(rows, start: datetime | None) -> dict[str, Tally]:
    if start is not None:
        rows = rows.filter(minute__gte=start)
    totals = rows.values("model").annotate(**{f"s_{n}": Sum(n) for n in SCALARS}).order_by()
    return {row["model"]: Tally(**{n: row[f"s_{n}"] or 0 for n in SCALARS}) for row in totals}
