"""Hand-written SQL for the hot paths: pop's claim, submit's exactly-once write, the status read.

Django's query building and compiling cost more CPU than these statements take to run (issue
17), so the few statements every pop, submit and status poll makes are written out once here,
for SQLite and PostgreSQL. Everything else uses the ORM. Values cross the boundary through the
helpers below, which apply the same conversions the model fields do (UUIDs as hex on SQLite,
naive UTC datetimes on SQLite, JSON as text or jsonb).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connection, connections


@cache
def is_postgres() -> bool:
    """Asked a dozen times per request: the database of a process never changes."""
    return connections[DEFAULT_DB_ALIAS].vendor == "postgresql"


def uuid_param(value: uuid.UUID | str) -> Any:
    value = value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    return value if is_postgres() else value.hex


def dt_param(value: datetime) -> Any:
    """As the DateTimeField writes it: aware on PostgreSQL; on SQLite the text of the naive
    UTC time (Django's adapt_datetimefield_value, without its per-call lookups)."""
    if is_postgres():
        return value
    return str(value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo else value)


def json_param(value: Any) -> Any:
    if is_postgres():
        from psycopg.types.json import Jsonb

        return Jsonb(value)
    return json.dumps(value)


def json_cast() -> str:
    """How a JSON parameter is written in an INSERT … SELECT (PostgreSQL needs the type)."""
    return "%s::jsonb" if is_postgres() else "%s"


def as_uuid(value: Any) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    return uuid.UUID(str(value))


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def placeholders(values: Sequence[object]) -> str:
    return ", ".join(["%s"] * len(values))


def least(*terms: str) -> str:
    return f"{'LEAST' if is_postgres() else 'MIN'}({', '.join(terms)})"


def greatest(*terms: str) -> str:
    return f"{'GREATEST' if is_postgres() else 'MAX'}({', '.join(terms)})"


def right(column: str, length: int) -> str:
    """The last `length` characters of a text column."""
    return f"right({column}, {length})" if is_postgres() else f"substr({column}, -{length})"


def fetch(sql: str, params: Sequence[object]) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def execute(sql: str, params: Sequence[object]) -> int:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount
