"""Small helpers the thin API views share."""

from __future__ import annotations

import uuid
from typing import Any

from rest_framework import serializers

from koboldcluster.errors import NotFound
from koboldcluster.fields import InputSerializer


def validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    """Validate a request body; a bad one becomes a 400 naming each field at fault."""
    if not isinstance(data, dict):
        raise serializers.ValidationError({"body": "Expected a JSON object."})
    if issubclass(serializer_class, InputSerializer):
        try:
            return serializer_class.validate_at_once(data)
        except serializers.ValidationError:
            pass  # worded below, exactly as always
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def parse_uuid(value: str, *, rc: str, what: str) -> uuid.UUID:
    """A malformed id names nothing that exists: answer 404 like for an unknown one."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise NotFound(f"{what} {value} is unknown or has expired.", rc=rc) from None
