"""Model instances, and their timestamps, for rows that hot paths read with hand-written SQL."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from django.db import DEFAULT_DB_ALIAS
from django.db.models import Model
from django.db.models.base import ModelState
from django.utils.dateparse import parse_datetime

M = TypeVar("M", bound=Model)


def instance(model_class: type[M], /, **values: Any) -> M:
    """An instance of `model` with these field values, as the ORM would have read it.

    Built as unpickling builds one (`Model.__reduce__`): a bare object whose `__dict__` holds
    the values, without `Model.__init__`, which costs tens of microseconds per instance in
    argument handling and signals that no model here listens to. Fields are given by
    attribute name (`owner_id`) or, for a relation, by the related object (`owner=user`).
    Fields not given are deferred: reading one would query, so hot paths give every field
    they use.
    """
    names = _attnames(model_class)
    obj = model_class.__new__(model_class)
    state = obj.__dict__
    related = {}
    for name, value in values.items():
        if name in names:
            state[name] = value
        elif name in names.relations:
            related[name] = value
        else:
            raise TypeError(f"{model_class.__name__} has no field {name}")
    state["_state"] = ModelState()
    state["_state"].adding = False
    state["_state"].db = DEFAULT_DB_ALIAS
    for name, value in related.items():
        setattr(obj, name, value)  # the descriptor sets `<name>_id` and caches the object
    return obj


class _Names(frozenset):
    relations: frozenset[str]


_names: dict[type[Model], _Names] = {}


def _attnames(model_class: type[Model]) -> _Names:
    """The attribute names of a model's columns, and the names of its relations (cached)."""
    names = _names.get(model_class)
    if names is None:
        fields = model_class._meta.concrete_fields
        names = _Names(field.attname for field in fields)
        names.relations = frozenset(field.name for field in fields if field.is_relation)
        _names[model_class] = names
    return names


def aware(value: Any) -> datetime | None:
    """A timestamp as a raw read gives it (SQLite: text or naive UTC; PostgreSQL: aware)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = parse_datetime(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
