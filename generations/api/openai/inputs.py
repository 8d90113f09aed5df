"""What the OpenAI-compatible API takes: its request bodies, and the queue request one makes.

OpenAI's fields become the cluster's (`max_tokens` its `max_length`, `stop` its stop
sequences), with KoboldAI's samplers passed through by their names; the context is the
client's `truncation_length` or the cluster's estimate of what the prompt needs.
"""

from __future__ import annotations

import math
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request

from accounts.models import User
from generations import chat
from generations.api.openai.shapes import Unsupported
from generations.chat import MODEL_NAME_MAX
from generations.fitting import Fit, fitted
from generations.frontend import models_for, served_models
from generations.idempotency import idempotency_key
from generations.intake import GenerationRequest
from generations.params import GenerationParamsSerializer, split_params, validate_prompt_text
from generations.trusted_only import trusted_only
from koboldcluster.api import validated
from koboldcluster.fields import INT_MAX, StrictCharField

# Room for the model's tokenizer counting more tokens than the cluster's estimate.
CONTEXT_MARGIN = 1.25
# KoboldAI sampler fields a client may send as they are (SillyTavern's Text Completion does).
KOBOLD_SAMPLERS = (
    "top_k",
    "top_a",
    "typical",
    "tfs",
    "min_p",
    "rep_pen",
    "rep_pen_range",
    "rep_pen_slope",
    "sampler_order",
    "smoothing_factor",
    "dynatemp_range",
    "dynatemp_exponent",
)


@extend_schema_field(
    {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
)
class StopField(serializers.Field):
    """OpenAI's `stop`: a string, a list of strings, or null."""

    def to_internal_value(self, data: Any) -> list[str]:
        if data is None:
            return []
        items = [data] if isinstance(data, str) else data
        if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
            raise serializers.ValidationError("Must be a string or a list of strings.")
        return [s for s in items if s]


class CompletionInput(serializers.Serializer):
    model = StrictCharField(
        required=False, allow_blank=True, allow_null=True, default="", max_length=MODEL_NAME_MAX
    )
    max_tokens = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=INT_MAX
    )
    temperature = serializers.FloatField(required=False, allow_null=True, min_value=0)
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1)
    n = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    stop = StopField(required=False, default=list)
    truncation_length = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=INT_MAX
    )
    stream = serializers.BooleanField(required=False, allow_null=True, default=False)
    stream_options = serializers.DictField(required=False, allow_null=True, default=None)

    def validate_stream(self, value: bool | None) -> bool:
        return bool(value)

    def validate(self, data: dict[str, Any]) -> dict[str, Any]:
        options = data.pop("stream_options", None) or {}
        data["include_usage"] = bool(options.get("include_usage"))
        if data["stream"] and (data.get("n") or 1) > 1:
            raise Unsupported("Streaming takes n = 1 only.", param="n")
        return data


class CompletionsInput(CompletionInput):
    prompt = serializers.JSONField(help_text="A string (or a list of one string).")

    def validate_prompt(self, value: Any) -> str:
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str):
            raise serializers.ValidationError("Must be a string (token ids are not taken).")
        return value


class Message(serializers.Serializer):
    role = serializers.ChoiceField(["system", "developer", "user", "assistant"])
    content = serializers.JSONField()
    # A last assistant message to continue rather than answer (Mistral's and Lite's names).
    prefix = serializers.BooleanField(required=False, default=False)
    partial = serializers.BooleanField(required=False, default=False)

    def validate_content(self, value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(
            isinstance(part, dict) and part.get("type") == "text" for part in value
        ):
            return "".join(str(part.get("text", "")) for part in value)
        raise serializers.ValidationError("Must be text (images and audio are not taken).")


# A chat longer than this is refused before any message is read (each costs ~40 µs to check).
MAX_MESSAGES = 1000


class ChatInput(CompletionInput):
    messages = Message(many=True, allow_empty=False, max_length=MAX_MESSAGES)
    max_completion_tokens = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=INT_MAX
    )


async def generation_request(
    request: Request,
    user: User,
    data: dict[str, Any],
    text: str,
    default_max: int,
    stops: list[str],
) -> tuple[GenerationRequest, Fit]:
    """The queue request for an OpenAI body (its servers, lengths and KoboldAI samplers),
    fitted to the servers online, and the lengths applied."""
    try:
        validate_prompt_text(text)
    except serializers.ValidationError as error:
        field = "messages" if "messages" in data else "prompt"
        raise serializers.ValidationError({field: error.detail}) from None
    served = await sync_to_async(served_models)()
    requested = (data.get("model") or "").strip()
    models = models_for(requested, served)
    candidates = [m for m in served if not models or m.name in models]
    max_tokens = data.get("max_completion_tokens") or data.get("max_tokens")
    if not max_tokens:
        longest = max((m.max_length for m in candidates), default=default_max)
        max_tokens = min(default_max, longest)
    max_tokens = min(max_tokens, settings.KOBOLDCLUSTER["MAX_LENGTH"])  # fitted below anyway
    # Without the client's context, the cluster's estimate of what the prompt needs chooses
    # the servers, and each job then gets its server's whole context (Prompt.whole_context).
    truncation = data.get("truncation_length")
    context = truncation or math.ceil(chat.estimate_tokens(text) * CONTEXT_MARGIN + max_tokens)
    context = min(max(context, max_tokens), settings.KOBOLDCLUSTER["MAX_CONTEXT_LENGTH"])
    params: dict[str, Any] = {
        "n": data.get("n") or 1,
        "max_length": max_tokens,
        "max_context_length": context,
        **{key: request.data[key] for key in KOBOLD_SAMPLERS if key in request.data},
    }
    for name in ("temperature", "top_p"):
        if data.get(name) is not None:
            params[name] = max(data[name], 0.001) if name == "top_p" else data[name]
    if stops:
        params["stop_sequence"] = stops
    checked = validated(GenerationParamsSerializer, params)
    shape_params, samplers = split_params(checked)
    agent = request.META.get("HTTP_USER_AGENT", "")[:100] or "OpenAI API"
    generation = GenerationRequest(
        text=text,
        params=samplers,
        models=models,
        client_agent=agent,
        whole_context=not truncation,
        idempotency_key=idempotency_key(request),
        trusted_workers=trusted_only(request),
        **shape_params,
    )
    return await fitted(user, generation, requested=requested)
