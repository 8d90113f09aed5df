"""Logging rules: a client's mistake is one line, never a traceback, never its body."""

from __future__ import annotations

import logging


class ClientErrorsOneLine(logging.Filter):
    """Django reports refused requests (an oversized body, too many fields …) on the
    `django.security.*` loggers at ERROR with a traceback: one flood of bad requests would bury
    the log. They are the client's doing: keep the one-line message, as a WARNING."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("django.security.") and record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = record.stack_info = None
        return True
