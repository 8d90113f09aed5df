"""What a generation may ask for: its parameters and prompt text, checked the same for every face
and for the canaries.

Only parameters KoboldAI's generate endpoint knows reach a server; each is checked against
the range KoboldAI (and horde-sdk's worker models) accept, so a payload can never crash a bridge.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework import serializers

from koboldcluster.fields import (
    BoundedListField,
    InputSerializer,
    StrictBooleanField,
    StrictCharField,
    StrictFloatField,
    StrictIntegerField,
    StringListField,
)

# The columns of a prompt; everything else in params is a sampler setting passed through.
SHAPE_PARAMS = ("n", "max_length", "max_context_length")


class GenerationParamsSerializer(InputSerializer):
    n = StrictIntegerField(min_value=1, default=1)
    max_length = StrictIntegerField(min_value=1, default=80)
    max_context_length = StrictIntegerField(min_value=1, default=1024)
    temperature = StrictFloatField(min_value=0, max_value=5, required=False)
    top_p = StrictFloatField(min_value=0.001, max_value=1, required=False)
    top_k = StrictIntegerField(min_value=0, max_value=100, required=False)
    top_a = StrictFloatField(min_value=0, max_value=1, required=False)
    typical = StrictFloatField(min_value=0, max_value=1, required=False)
    tfs = StrictFloatField(min_value=0, max_value=1, required=False)
    min_p = StrictFloatField(min_value=0, max_value=1, required=False)
    rep_pen = StrictFloatField(min_value=1, max_value=3, required=False)
    rep_pen_range = StrictIntegerField(min_value=0, max_value=4096, required=False)
    rep_pen_slope = StrictFloatField(min_value=0, max_value=10, required=False)
    smoothing_factor = StrictFloatField(min_value=0, max_value=10, required=False)
    dynatemp_range = StrictFloatField(min_value=0, max_value=5, required=False)
    dynatemp_exponent = StrictFloatField(min_value=0, max_value=5, required=False)
    # KoboldCpp's seed (-1: random); the cluster's canaries fix it (generations/canaries.py).
    sampler_seed = StrictIntegerField(min_value=-1, max_value=2**31 - 1, required=False)
    sampler_order = BoundedListField(
        child=StrictIntegerField(min_value=0, max_value=100), max_length=32, required=False
    )
    stop_sequence = StringListField(item_max_length=2000, max_length=1000, required=False)
    use_default_badwordsids = StrictBooleanField(required=False)
    singleline = StrictBooleanField(required=False)
    frmtadsnsp = StrictBooleanField(required=False)
    frmtrmblln = StrictBooleanField(required=False)
    frmtrmspch = StrictBooleanField(required=False)
    frmttriminc = StrictBooleanField(required=False)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        # The original cluster API spells the context length `max_content_length`.
        if isinstance(data, dict) and "max_content_length" in data:
            data = {"max_context_length": data["max_content_length"], **data}
        return super().to_internal_value(data)

    def validate_n(self, value: int) -> int:
        return _at_most(value, settings.KOBOLDCLUSTER["MAX_N"])

    def validate_max_length(self, value: int) -> int:
        return _at_most(value, settings.KOBOLDCLUSTER["MAX_LENGTH"])

    def validate_max_context_length(self, value: int) -> int:
        return _at_most(value, settings.KOBOLDCLUSTER["MAX_CONTEXT_LENGTH"])

    def validate_temperature(self, value: float) -> float:
        # KoboldAI refuses 0 (a 422 the bridge can only fail on); 0.01 is as greedy in practice.
        return max(value, 0.01)

    def validate_sampler_order(self, value: list[int]) -> list[int]:
        if len(set(value)) < 7:
            raise serializers.ValidationError("Must list at least 7 distinct samplers.")
        return value

    def validate_stop_sequence(self, value: list[str]) -> list[str]:
        if len(set(value)) > 128:
            raise serializers.ValidationError("At most 128 stop sequences.")
        if sum(len(s) for s in value) > 2000:
            raise serializers.ValidationError("At most 2000 characters of stop sequences.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["max_context_length"] < attrs["max_length"]:
            raise serializers.ValidationError(
                {"max_context_length": "Must be at least max_length."}
            )
        return attrs


def _at_most(value: int, cap: int) -> int:
    if value > cap:
        raise serializers.ValidationError(f"Ensure this value is less than or equal to {cap}.")
    return value


def validate_prompt_text(value: str) -> str:
    """Within the size cap, and text every database stores: no NUL (PostgreSQL refuses it)
    and no lone surrogate (not encodable: JSON may carry `\\ud800`, no column can)."""
    cap = settings.KOBOLDCLUSTER["MAX_PROMPT_CHARS"]
    if len(value) > cap:
        raise serializers.ValidationError(f"The prompt is longer than {cap} characters.")
    if "\x00" in value:
        raise serializers.ValidationError("Null characters are not allowed.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise serializers.ValidationError("Must be valid Unicode (no lone surrogates).") from None
    return value


class PromptTextField(StrictCharField):
    """The prompt: a non-empty string, kept exactly as sent, within the size cap."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(validators=[validate_prompt_text], **kwargs)


def split_params(validated: dict[str, Any]) -> tuple[dict[str, int], dict[str, Any]]:
    """Separate the prompt's shape (n, lengths) from the sampler settings."""
    shape = {key: validated[key] for key in SHAPE_PARAMS}
    samplers = {key: value for key, value in validated.items() if key not in SHAPE_PARAMS}
    return shape, samplers
