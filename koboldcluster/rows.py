"""Model instances, and their timestamps, for rows that hot paths read with hand-written SQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS
from django.db.models import DEFERRED, Model
from django.utils.dateparse import parse_datetime

M = TypeVar("M", bound=Model)


def instance(model_class: type[M], /, **values: Any) -> M:
    """An instance of `model` with these field values, built as the ORM builds what it reads.

    `Model.from_db` skips the defaults and keyword handling of `Model(...)`, which cost tens of
    microseconds per instance. Fields are given by attribute name (`owner_id`) or, for a
    relation, by the related object (`owner=user`). Fields not given are deferred: reading
    one would query, so hot paths give every field they use.
    """
    related = {}
    row = []
    for field in model_class._meta.concrete_fields:
        if field.attname in values:
            row.append(values.pop(field.attname))
        elif field.is_relation and field.name in values:
            related[field.name] = values.pop(field.name)
            row.append(related[field.name].pk)
        else:
            row.append(DEFERRED)
    if values:
        raise TypeError(f"{model_class.__name__} has no fields {sorted(values)}")
    obj = model_class.from_db(DEFAULT_DB_ALIAS, None, row)
    for name, value in related.items():
        setattr(obj, name, value)
    return obj


def aware(value: Any) -> datetime | None:
    """A timestamp as a raw read gives it (SQLite: text or naive UTC; PostgreSQL: aware)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
