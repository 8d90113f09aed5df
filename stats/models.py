"""Usage statistics that stay small: per-minute rows for 30 days, then per-day rows.

Jobs and prompts are purged minutes after their last use, so the statistics are rolled up from
them while they still exist (`stats.rollups`). The rows hold counts only, never text.
"""

from __future__ import annotations

from django.db import models

# Upper bounds (seconds) of the buckets of "prompt created → its first job started"; one more
# bucket holds everything longer. Per-minute rows add up bucket by bucket, so a median over
# any period comes from the same few numbers (an estimate within one bucket).
WAIT_BOUNDS: tuple[float, ...] = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)


def empty_buckets() -> list[int]:
    return [0] * (len(WAIT_BOUNDS) + 1)


class Counts(models.Model):
    """What happened in one period on one model (`model=""`: no model, e.g. prompts created)."""

    model = models.CharField(max_length=255, blank=True)
    prompts = models.BigIntegerField(default=0, help_text="Prompts created (on the '' row).")
    jobs = models.BigIntegerField(default=0, help_text="Jobs handed to servers (popped).")
    generations = models.BigIntegerField(default=0, help_text="Jobs delivered.")
    tokens = models.BigIntegerField(default=0, help_text="Tokens of the delivered jobs.")
    faulted = models.BigIntegerField(default=0, help_text="Jobs the server gave up.")
    abandoned = models.BigIntegerField(default=0, help_text="Jobs the reaper took back.")
    waits = models.BigIntegerField(default=0, help_text="Prompts whose first job started.")
    wait_seconds = models.FloatField(default=0.0, help_text="Their waits added up.")
    wait_buckets = models.JSONField(default=empty_buckets, help_text="Their waits by bucket.")

    class Meta:
        abstract = True

    @property
    def faults(self) -> int:
        return self.faulted + self.abandoned


class MinuteRollup(Counts):
    minute = models.DateTimeField(help_text="Start of the minute (UTC).")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["minute", "model"], name="minute_rollup_once")
        ]

    def __str__(self) -> str:
        return f"{self.minute:%Y-%m-%d %H:%M} {self.model}"


class DayRollup(Counts):
    day = models.DateField(help_text="The day (UTC).")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["day", "model"], name="day_rollup_once")]

    def __str__(self) -> str:
        return f"{self.day} {self.model}"


class RollupMark(models.Model):
    """One row: everything before `rolled_until` is in the rollup tables, nothing after it."""

    rolled_until = models.DateTimeField()

    def __str__(self) -> str:
        return f"rolled up until {self.rolled_until}"
