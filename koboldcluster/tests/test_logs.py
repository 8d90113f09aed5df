"""The log's lines: PlainFormatter writes each exactly as logging.Formatter does."""

from __future__ import annotations

import logging
import os
import random
import time

from django.conf import settings

from koboldcluster.logs import PlainFormatter

FORMAT = settings.LOGGING["formatters"]["plain"]["format"]


def record_at(created: float) -> logging.LogRecord:
    record = logging.LogRecord("generations.queue", logging.INFO, __file__, 1, "job %s", (7,), None)
    record.created, record.msecs = created, (created - int(created)) * 1000
    return record


def test_each_line_is_the_one_logging_writes():
    ours, theirs = PlainFormatter(FORMAT), logging.Formatter(FORMAT)
    rng = random.Random(5)
    now = time.time()
    times = sorted(now + rng.uniform(-3, 3) for _ in range(300)) + [0.0, 0.999, 1.0, 1e9 + 0.5]
    for created in times + times[::-1]:
        record = record_at(created)
        assert ours.format(record) == theirs.format(record)


def test_a_new_time_zone_is_followed_within_the_second():
    ours, theirs = PlainFormatter(FORMAT), logging.Formatter(FORMAT)
    before = os.environ.get("TZ")
    record = record_at(1e9 + 0.25)
    try:
        for zone in ("UTC", "Asia/Tokyo", "America/New_York", "UTC"):
            os.environ["TZ"] = zone
            time.tzset()
            assert ours.format(record) == theirs.format(record), zone
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_the_console_writes_with_it():
    assert settings.LOGGING["formatters"]["plain"]["class"] == "koboldcluster.logs.PlainFormatter"
