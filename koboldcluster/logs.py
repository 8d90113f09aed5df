"""Logging rules: a client's mistake is one line, never a traceback, never its body."""

from __future__ import annotations

import logging
import time
from typing import Any


class ClientErrorsOneLine(logging.Filter):
    """Django reports refused requests (an oversized body, too many fields …) on the
    `django.security.*` loggers at ERROR with a traceback: one flood of bad requests would bury
    the log. They are the client's doing: keep the one-line message, as a WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security.") and record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = record.stack_info = None
        return True


class PlainFormatter(logging.Formatter):
    """logging.Formatter, writing the date and time of a second once rather than for every
    line in it (time.localtime and strftime: 1.4 us of the 8 a line costs; a generation logs
    three lines). Same lines: the text is keyed by the whole second, which is all localtime
    reads of it, and by the time zone in force (time.tzset, as Django's TIME_ZONE setting
    calls it, makes a new time.tzname)."""

    _second: tuple[int, Any, str] = (-1, None, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        if datefmt is not None or self.converter is not time.localtime or record.created < 0:
            return super().formatTime(record, datefmt)
        second, zone = int(record.created), time.tzname
        cached_second, cached_zone, text = self._second
        if cached_second != second or cached_zone is not zone:
            text = time.strftime(self.default_time_format, time.localtime(second))
            self._second = (second, zone, text)
        return self.default_msec_format % (text, record.msecs)
