"""Fields and parsers the faces share (the original API and the AI Horde v2 API's servers'
endpoints), kept here so that no face imports another's views."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from accounts.authentication import api_user
from koboldcluster.api import parse_uuid
from koboldcluster.fields import StrictCharField, StrictIntegerField
from servers.services import Credentials

# The most a server may declare as its max_length or context: what its columns hold.
SERVER_LIMIT = 2**31 - 1


def prompt_uuid(value: str) -> object:
    return parse_uuid(value, rc="RequestNotFound", what="Request")


def server_credentials(request: Any, data: dict[str, Any]) -> Credentials:
    """From the body, or the API key's user (`request.user`, a DRF or a direct request's)."""
    return Credentials(
        username=data.get("username"), password=data.get("password"), api_user=api_user(request)
    )


class GenerationField(StrictCharField):
    """Generated text, kept exactly; NUL (which PostgreSQL cannot store) becomes U+FFFD."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_blank=True, trim_whitespace=False, **kwargs)

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, str):
            data = data.replace("\x00", "\ufffd")
        return super().to_internal_value(data)


class PromptCounts(serializers.Serializer):
    """What a submit may say of the prompt the backend saw (both submit APIs)."""

    prompt_tokens = StrictIntegerField(
        min_value=0,
        max_value=2**31 - 1,
        required=False,
        help_text="This cluster's extension: the backend's count of the prompt's tokens as "
        "the bridge sent it (after any trimming).",
    )
    prompt_trimmed = StrictIntegerField(
        min_value=0,
        max_value=2**31 - 1,
        default=0,
        help_text="This cluster's extension: the tokens the bridge cut from the front of "
        "the prompt to fit the backend's context (0: none).",
    )
