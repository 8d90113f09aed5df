"""Serializer fields that refuse what JSON did not say.

DRF's own fields coerce: "5" becomes 5, 1 becomes "1", "yes" becomes True. A client that sends
the wrong type has a bug it should hear about, so these fields accept only the JSON type.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any

from rest_framework import serializers
from rest_framework.utils.serializer_helpers import BindingDict
from rest_framework.validators import ProhibitSurrogateCharactersValidator

# What a database integer column holds: a number beyond it is a 400, never an overflow.
BIGINT_RANGE = {"min_value": -(2**63), "max_value": 2**63 - 1}
INT_MAX = 2**31 - 1


class StrictCharField(serializers.CharField):
    default_error_messages = {
        "invalid": "Must be a string.",
        "invalid_unicode": "Must be valid Unicode (no lone surrogates).",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # DRF's surrogate check walks the text in Python (50 ms for a megabyte); the encode
        # below finds the same in C.
        self.validators = [
            v for v in self.validators if not isinstance(v, ProhibitSurrogateCharactersValidator)
        ]

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)  # before any walk of it
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            self.fail("invalid_unicode")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "Must be an integer."}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        if isinstance(data, float) and not data.is_integer():
            self.fail("invalid")
        return super().to_internal_value(int(data))


class StrictFloatField(serializers.FloatField):
    default_error_messages = {"invalid": "Must be a number."}

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class OptionField(StrictBooleanField):
    """An optional switch: missing or `null` both mean its default.

    Some clients send every option and the unset ones as null.
    """

    def __init__(self, default: bool, **kwargs: Any) -> None:
        super().__init__(required=False, allow_null=True, default=default, **kwargs)

    def validate_empty_values(self, data: Any) -> tuple[bool, Any]:
        if data is None:
            return True, self.get_default()
        return super().validate_empty_values(data)


def optional_text(**kwargs: Any) -> StrictCharField:
    """A string the client may leave out, send empty, or send as null."""
    return StrictCharField(required=False, allow_null=True, allow_blank=True, **kwargs)


class BoundedListField(serializers.ListField):
    """A ListField that refuses a list longer than its max_length before it validates a
    single item (DRF validates them all first: 10,000 items cost a third of a second)."""

    def to_internal_value(self, data: Any) -> list[Any]:
        if self.max_length is not None and isinstance(data, list) and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)
        return super().to_internal_value(data)


class StringListField(BoundedListField):
    """A JSON list of strings; `null` counts as an empty list."""

    default_error_messages = {"not_a_list": "Must be a list of strings."}

    def __init__(self, *, item_max_length: int = 255, **kwargs: Any) -> None:
        # Kept exactly as sent: a stop sequence of "\n" must stay "\n".
        kwargs.setdefault(
            "child", StrictCharField(max_length=item_max_length, trim_whitespace=False)
        )
        super().__init__(**kwargs)

    def validate_empty_values(self, data: Any) -> tuple[bool, Any]:
        if data is None:
            return True, []
        return super().validate_empty_values(data)


class InputSerializer(serializers.Serializer):
    """A request body's serializer whose fields are built once per thread, not per request.

    DRF deep-copies every declared field for every serializer instance (for the params of a
    prompt, 25 fields on every request: the largest part of a create's CPU time). Fields keep
    no state between validations, so each thread builds a class's fields once and points them
    at each new instance in turn. For request bodies validated one at a time per thread
    (validate, then let go), which is how `koboldcluster.api.validated` uses them.
    """

    _fields_by_thread = threading.local()

    @cached_property
    def fields(self) -> BindingDict:
        built: dict[type, BindingDict] = self._fields_by_thread.__dict__
        fields = built.get(type(self))
        if fields is None:
            fields = built[type(self)] = BindingDict(self)
            for name, field in self.get_fields().items():
                fields[name] = field
        for field in fields.values():
            field.parent = self
        return fields

    _instances_by_thread = threading.local()

    @classmethod
    def validate_at_once(cls, data: dict[str, Any]) -> dict[str, Any]:
        """The validated `data`, by this thread's one instance of the class (building a
        serializer costs as much as validating a small body). Raises ValidationError, whose
        wording `is_valid` on a new instance gives (`koboldcluster.api.validated`)."""
        instances: dict[type, InputSerializer] = cls._instances_by_thread.__dict__
        serializer = instances.get(cls)
        if serializer is None:
            serializer = instances[cls] = cls()
        return serializer.run_validation(data)
