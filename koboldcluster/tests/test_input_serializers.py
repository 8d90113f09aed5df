"""The request bodies' serializers (koboldcluster.fields.InputSerializer) answer as DRF's own
Serializer does: the same validated data, the same errors, for every body.

InputSerializer passes over the optional fields a body leaves out without asking each of
them to skip itself, and skips DRF's serializer-level validators when there are none; the
strict string and integer fields take a value DRF surely takes at once: all only save time.
Here every InputSerializer of the project validates many bodies of present, missing, wrong
and odd values twice, its way and with DRF's methods put back, and the answers must be equal.
"""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from django.urls import get_resolver
from rest_framework import fields as drf
from rest_framework import serializers
from rest_framework.exceptions import APIException

from koboldcluster.api import validated
from koboldcluster.errors import ApiError
from koboldcluster.fields import (
    InputSerializer,
    StrictCharField,
    StrictIntegerField,
    skipped_when_missing,
)

pytestmark = pytest.mark.django_db

MISSING = object()
VALUES: list[Any] = [
    MISSING,
    None,
    "",
    " ",
    "text",
    "  padded\t",
    "a\x00b",
    "\ud800",
    "x" * 256,
    "y" * 1001,
    "ok",
    "censorship",
    "csam",
    "good",
    "bad",
    str(uuid.uuid4()),
    0,
    1,
    7,
    100,
    4096,
    -1,
    1.5,
    2**70,
    2**63,
    -(2**63) - 1,
    5.0,
    True,
    False,
    [],
    [1, 2, 3, 4, 5, 6, 7],
    ["a", "b"],
    {},
    {"type": "censorship", "value": "csam"},
    {"max_length": 10},
]


def input_serializers() -> list[type[InputSerializer]]:
    get_resolver().url_patterns  # noqa: B018 - imports every view, and so every serializer
    found, todo = [], [InputSerializer]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls is not InputSerializer:
            found.append(cls)
    return sorted(found, key=lambda cls: cls.__qualname__)


def answer(cls: type[InputSerializer], data: Any) -> tuple[str, Any]:
    try:
        return "valid", list(validated(cls, data).items())  # in the same order too
    except (APIException, ApiError) as exc:  # a ValidationError, or a validate_ method's own
        return "invalid", (type(exc), getattr(exc, "detail", None), vars(exc), str(exc))


def passing(field: drf.Field) -> list[Any]:
    """The values of VALUES that `field` takes on its own (MISSING when it may be left out)."""
    found = []
    for value in VALUES:
        try:
            field.run_validation(drf.empty if value is MISSING else value)
        except (serializers.ValidationError, drf.SkipField):
            if value is MISSING:
                found.append(value)
        except Exception:  # noqa: BLE001, S112 - a value the field cannot even look at
            continue
        else:
            found.append(value)
    return found


def bodies(cls: type[InputSerializer], count: int) -> list[dict[str, Any]]:
    """Bodies mostly of values each field takes (so that some are valid), with a wrong one
    now and then, and most fields often left out."""
    fields = cls().fields
    good = {name: passing(field) or VALUES for name, field in fields.items()}
    rng = random.Random(cls.__qualname__)
    made: list[dict[str, Any]] = [{}, {"unknown": 1}]
    for _ in range(count):
        chosen = {name: rng.choice(good[name] if rng.random() < 0.9 else VALUES) for name in fields}
        if rng.random() < 0.5:  # mostly missing: the usual body, and the fast path
            chosen = {name: value for name, value in chosen.items() if rng.random() < 0.3}
        made.append({name: value for name, value in chosen.items() if value is not MISSING})
    return made


def test_there_are_serializers_and_most_of_their_optional_fields_are_passed_over():
    classes = input_serializers()
    assert len(classes) > 10
    params = next(cls for cls in classes if cls.__name__ == "GenerationParamsSerializer")
    passed_over = [field for field in params().fields.values() if skipped_when_missing(field)]
    assert len(passed_over) == 22


@pytest.mark.parametrize("cls", input_serializers(), ids=lambda cls: cls.__qualname__)
def test_each_answers_every_body_as_drf_does(cls, monkeypatch):
    cases = bodies(cls, 400)
    ours = [answer(cls, data) for data in cases]
    monkeypatch.delattr(InputSerializer, "to_internal_value")
    monkeypatch.delattr(InputSerializer, "run_validators")
    monkeypatch.delattr(StrictCharField, "run_validation")
    monkeypatch.delattr(StrictIntegerField, "run_validation")
    InputSerializer._instances_by_thread.__dict__.clear()
    drfs = [answer(cls, data) for data in cases]
    InputSerializer._instances_by_thread.__dict__.clear()
    for data, mine, theirs in zip(cases, ours, drfs, strict=True):
        assert mine == theirs, data
    assert {kind for kind, _ in ours} == {"valid", "invalid"}


def test_a_field_that_could_answer_a_missing_key_otherwise_is_asked():
    class Odd(drf.CharField):
        def get_default(self) -> str:
            return "odd"

    assert skipped_when_missing(drf.CharField(required=False))
    assert not skipped_when_missing(Odd(required=False))
    assert not skipped_when_missing(drf.CharField(required=False, default="x"))
    assert not skipped_when_missing(drf.CharField())
