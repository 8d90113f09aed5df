"""The AI Horde v2 API's generation parameters: its own defaults, minimums and error codes."""

from __future__ import annotations

from typing import Any

from generations.params import GenerationParamsSerializer
from koboldcluster.errors import BadRequest
from koboldcluster.fields import StrictIntegerField


class HordeParamsSerializer(GenerationParamsSerializer):
    """The AI Horde's `params` (research §2.1): its defaults, its minimums and its error codes.

    The maxima stay the cluster's own (KOBOLDCLUSTER_MAX_N, _MAX_LENGTH, _MAX_CONTEXT_LENGTH).
    """

    max_length = StrictIntegerField(min_value=16, default=80)
    max_context_length = StrictIntegerField(min_value=80, default=2048)

    def validate_sampler_order(self, value: list[int]) -> list[int]:
        if len(set(value)) < 7:
            raise BadRequest(
                "sampler_order must list at least 7 distinct samplers.",
                rc="MissingFullSamplerOrder",
            )
        return value

    def validate_stop_sequence(self, value: list[str]) -> list[str]:
        if len(set(value)) > 128:
            raise BadRequest("At most 128 stop sequences.", rc="TooManyStopSequences")
        if sum(len(s) for s in value) > 2000:
            raise BadRequest(
                "At most 2000 characters of stop sequences.", rc="ExcessiveStopSequence"
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["max_context_length"] < attrs["max_length"]:
            raise BadRequest(
                f"max_context_length ({attrs['max_context_length']}) must be at least "
                f"max_length ({attrs['max_length']}).",
                rc="TokenOverflow",
            )
        return attrs
