"""Serializer fields that refuse what JSON did not say.

DRF's own fields coerce: "5" becomes 5, 1 becomes "1", "yes" becomes True. A client that sends
the wrong type has a bug it should hear about, so these fields accept only the JSON type.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any

from django.core import validators as django_validators
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import fields as drf
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
        if not _encodable(data):
            self.fail("invalid_unicode")
        return super().to_internal_value(data)

    def run_validation(self, data: Any = drf.empty) -> Any:
        """DRF's, but a string it surely takes is taken at once (about 1 us of DRF's calls
        per field, six fields a pop); anything else, DRF's way, for its exact answer."""
        limits = self._plain_limits
        if limits is not None and type(data) is str:
            value = data.strip() if self.trim_whitespace else data
            shortest, longest, no_nul = limits
            if (
                value
                and shortest <= len(value)
                and len(data) <= longest
                and not (no_nul and "\x00" in value)
                and _encodable(data)
            ):
                return value
        return super().run_validation(data)

    @cached_property
    def _plain_limits(self) -> tuple[int, float, bool] | None:
        """(min length, max length, NUL refused) when DRF's run_validation of a string does
        only what `run_validation` checks: the methods on the way are CharField's and this
        class's, the validators only lengths and NUL. None when not."""
        if not _methods_are(self, StrictCharField, ("to_internal_value", "run_validation")):
            return None
        longest = float("inf") if self.max_length is None else self.max_length
        shortest, no_nul = 0, False
        for validator in self.validators:
            kind = type(validator)
            if kind is django_validators.ProhibitNullCharactersValidator:
                no_nul = True
            elif kind in _LENGTH_VALIDATORS and type(validator.limit_value) is int:
                if kind is django_validators.MinLengthValidator:
                    shortest = max(shortest, validator.limit_value)
                else:
                    longest = min(longest, validator.limit_value)
            else:
                return None
        return shortest, longest, no_nul


class StrictIntegerField(serializers.IntegerField):
    default_error_messages = {"invalid": "Must be an integer."}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        if isinstance(data, float) and not data.is_integer():
            self.fail("invalid")
        return super().to_internal_value(int(data))

    def run_validation(self, data: Any = drf.empty) -> Any:
        """DRF's, but an int within the bounds is taken at once (as for StrictCharField)."""
        bounds = self._plain_bounds
        if bounds is not None and type(data) is int and bounds[0] <= data <= bounds[1]:
            return data
        return super().run_validation(data)

    @cached_property
    def _plain_bounds(self) -> tuple[int, int] | None:
        """(lowest, highest) when DRF's run_validation of an int only compares it with
        bounds (the validators' and a bigint's: DRF reads an int through its text, which
        fails past 4300 digits); None when not."""
        if not _methods_are(self, StrictIntegerField, ("to_internal_value", "run_validation")):
            return None
        lowest, highest = BIGINT_RANGE["min_value"], BIGINT_RANGE["max_value"]
        for validator in self.validators:
            kind, limit = type(validator), getattr(validator, "limit_value", None)
            if kind is django_validators.MinValueValidator and type(limit) is int:
                lowest = max(lowest, limit)
            elif kind is django_validators.MaxValueValidator and type(limit) is int:
                highest = min(highest, limit)
            else:
                return None
        return lowest, highest


_LENGTH_VALIDATORS = (django_validators.MinLengthValidator, django_validators.MaxLengthValidator)


def _encodable(text: str) -> bool:
    """Whether `text` is valid Unicode (no lone surrogates): the encode finds it in C."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _methods_are(field: drf.Field, cls: type, own: tuple[str, ...]) -> bool:
    """Whether `field` validates as `cls` does: `own` are cls's own methods, the rest of
    what DRF's run_validation calls is Field's (a subclass that changes any of them may
    answer otherwise, and is asked DRF's way)."""
    kind = type(field)
    if field.read_only or any(getattr(kind, name) is not getattr(cls, name) for name in own):
        return False
    shared = ("validate_empty_values", "run_validators")
    return all(getattr(kind, name) is getattr(drf.Field, name) for name in shared)


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

    @cached_property
    def _writable(self) -> list[drf.Field]:
        return [field for field in self.fields.values() if not field.read_only]

    @cached_property
    def _skipped_when_missing(self) -> frozenset[str]:
        return frozenset(f.field_name for f in self._writable if skipped_when_missing(f))

    @cached_property
    def _validate_methods(self) -> dict[str, Any]:
        """Each field's `validate_<name>` method, or None (looked up once per instance, not
        per field per request: a miss costs an AttributeError inside getattr)."""
        return {
            f.field_name: getattr(self, "validate_" + f.field_name, None) for f in self._writable
        }

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        """DRF's Serializer.to_internal_value, but a field that DRF would skip when a plain
        dict lacks its key is passed over unasked (`skipped_when_missing`): most of a
        request's optional fields are absent (22 of the 25 params of a usual prompt), and
        asking each to skip itself was most of the validation: a create's body validates in
        13 us instead of 51, a pop's in 16 instead of 27, a submit's in 9 instead of 16.
        koboldcluster/tests/test_input_serializers.py compares it with DRF's."""
        if type(data) is not dict or getattr(self.root, "partial", False):
            return super().to_internal_value(data)  # HTML forms, partial updates: DRF's way
        skipped, validate_methods = self._skipped_when_missing, self._validate_methods
        validated: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for field in self._writable:  # DRF's loop, but for the skip and the methods kept
            name = field.field_name
            if name in skipped and name not in data:
                continue
            validate_method = validate_methods[name]
            try:
                value = field.run_validation(field.get_value(data))
                if validate_method is not None:
                    value = validate_method(value)
            except serializers.ValidationError as exc:
                errors[name] = exc.detail
            except DjangoValidationError as exc:
                errors[name] = drf.get_error_detail(exc)
            except drf.SkipField:
                pass
            else:
                self.set_value(validated, field.source_attrs, value)
        if errors:
            raise serializers.ValidationError(errors)
        return validated

    @cached_property
    def _has_read_only_defaults(self) -> bool:
        return any(f.read_only and f.default is not drf.empty for f in self.fields.values())

    def run_validators(self, value: Any) -> None:
        """DRF's, which first collects the read-only fields' defaults for the validators:
        with no validator and no such field there is nothing to run (2 us a request)."""
        if self.validators or self._has_read_only_defaults:
            super().run_validators(value)


# The methods DRF calls on a field whose key is missing (get_value, then run_validation,
# validate_empty_values and get_default), as the classes below define them: each gives
# `empty` for a missing key of a plain dict, and SkipField for a field neither required nor
# with a default when the serializer is not partial. A class that overrides any of them
# otherwise may do something else, so its fields are asked like DRF asks them.
_ASKS_NOTHING_ELSE_WHEN_MISSING = {
    "get_value": {drf.Field.get_value, drf.ListField.get_value, drf.DictField.get_value},
    "run_validation": {
        drf.Field.run_validation,
        drf.CharField.run_validation,
        StrictCharField.run_validation,  # DRF's but for a string
        StrictIntegerField.run_validation,  # DRF's but for an int
    },
    "validate_empty_values": {
        drf.Field.validate_empty_values,
        OptionField.validate_empty_values,  # differs for None only
        StringListField.validate_empty_values,  # differs for None only
    },
    "get_default": {drf.Field.get_default},
}


def skipped_when_missing(field: drf.Field) -> bool:
    """Whether DRF's Serializer.to_internal_value skips `field` when a plain dict lacks its
    key (and the serializer is not partial), without calling anything else of it."""
    if field.required or field.read_only or field.default is not drf.empty:
        return False
    return all(
        getattr(type(field), method) in known
        for method, known in _ASKS_NOTHING_ELSE_WHEN_MISSING.items()
    )
