"""The KoboldAI API: the cluster answers like one very large KoboldAI server.

What KoboldAI Lite ("KoboldAI API" connection) and SillyTavern ("KoboldAI Classic")
call, read from their sources: `/api/v1/model`, `/api/v1/info/version`,
`/api/v1/config/max_context_length`, `/api/extra/version`, then `POST /api/v1/generate`,
which waits for its generation (generations/frontend.py). Errors keep the cluster's
`{"message", "rc"}` and add KoboldAI's `detail.msg`, which SillyTavern shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adrf.views import APIView as AsyncAPIView
from asgiref.sync import sync_to_async
from django.http.response import HttpResponseBase
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

import koboldcluster
from accounts.authentication import BearerApiKeyAuthentication, api_user
from accounts.identity import anonymous_user
from accounts.models import User
from generations.api.sse import event_stream, kobold_tokens
from generations.chat import estimate_tokens
from generations.fitting import LIMITS_HEADER, Fit, fitted
from generations.frontend import (
    generate,
    genkey_abort,
    genkey_check,
    outlook_headers,
    served_models,
    servers_header,
)
from generations.idempotency import IDEMPOTENCY_KEY_HEADER, idempotency_key
from generations.intake import GenerationRequest
from generations.params import GenerationParamsSerializer, PromptTextField, split_params
from generations.streaming import start
from generations.trusted_only import TRUSTED_ONLY_HEADER, trusted_only
from koboldcluster.api import validated
from koboldcluster.errors import BadRequest, exception_handler
from koboldcluster.fields import StrictCharField
from koboldcluster.openapi import error, shape

ExceptionHandler = Callable[[Exception, dict[str, Any]], Response | None]
KOBOLD = ["KoboldAI API"]
# The KoboldAI United API level whose generate fields we accept (stop_sequence: 1.2.2,
# use_default_badwordsids: 1.2.4); KoboldCpp reports the same.
KOBOLD_API_VERSION = "1.2.5"
MODEL_NAMES_SHOWN = 5
# KoboldAI Lite streams from a KoboldCpp of at least this version (its is_using_kcpp_with_sse:
# 1.40; polling /api/extra/generate/check from 1.30, mirostat fields from 1.37, which
# generate ignores). Higher versions unlock features this cluster does not serve.
LITE_STREAMING_VERSION = "1.40"

BEARER = OpenApiParameter(
    "Authorization",
    str,
    OpenApiParameter.HEADER,
    description="`Bearer <api key>` (KoboldAI Lite sends the key you type so); the `apikey` "
    "header works too. Without a key: the anonymous user.",
)


def kobold_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """The cluster's error, plus KoboldAI's `detail` that SillyTavern reads its message from."""
    response = exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "message" in response.data:
        response.data["detail"] = {"msg": response.data["message"], "type": response.data["rc"]}
    return response


class KoboldView(APIView):
    authentication_classes = [BearerApiKeyAuthentication]
    throttle_scope = "info"

    def get_exception_handler(self) -> ExceptionHandler:
        return kobold_exception_handler


VALUE = shape("KoboldValue", {"value": serializers.IntegerField()})
RESULT = shape("KoboldResult", {"result": serializers.CharField()})


class ModelView(KoboldView):
    @extend_schema(
        operation_id="kobold_model",
        tags=KOBOLD,
        summary="The model name",
        description="`koboldcluster/` and the models active servers serve now (the first "
        "five, then how many more). Never `ReadOnly`, which clients take for no model.",
        responses={200: RESULT},
    )
    def get(self, request: Request) -> Response:
        names = [model.name for model in served_models()]
        shown = ", ".join(names[:MODEL_NAMES_SHOWN]) or "no servers online"
        if len(names) > MODEL_NAMES_SHOWN:
            shown += f" +{len(names) - MODEL_NAMES_SHOWN} more"
        return Response({"result": f"koboldcluster/{shown}"})


class MaxLengthView(KoboldView):
    @extend_schema(
        operation_id="kobold_max_length",
        tags=KOBOLD,
        summary="The largest max_length an active server generates",
        description="0 when no server is active.",
        responses={200: VALUE},
    )
    def get(self, request: Request) -> Response:
        return Response({"value": max((m.max_length for m in served_models()), default=0)})


class MaxContextLengthView(KoboldView):
    @extend_schema(
        operation_id="kobold_max_context_length",
        tags=KOBOLD,
        summary="The largest context an active server takes",
        description="0 when no server is active.",
        responses={200: VALUE},
    )
    def get(self, request: Request) -> Response:
        return Response({"value": largest_context()})


def largest_context() -> int:
    """The largest context an active server takes (0 with none)."""
    return max((m.max_context_length for m in served_models()), default=0)


class InfoVersionView(KoboldView):
    @extend_schema(
        operation_id="kobold_info_version",
        tags=KOBOLD,
        summary="The KoboldAI United API level",
        description=f"`{KOBOLD_API_VERSION}`: generate accepts `stop_sequence` and "
        "`use_default_badwordsids`.",
        responses={200: RESULT},
    )
    def get(self, request: Request) -> Response:
        return Response({"result": KOBOLD_API_VERSION})


class ExtraVersionView(KoboldView):
    @extend_schema(
        operation_id="kobold_extra_version",
        tags=KOBOLD,
        summary="What this server is (KoboldCpp's feature probe)",
        description=f"`version` {LITE_STREAMING_VERSION}: the KoboldCpp version from which "
        "KoboldAI Lite streams through `/api/extra/generate/stream` (server-sent events) or "
        "polls `/api/extra/generate/check`, both served here; the features Lite unlocks at "
        "later versions are not claimed. No `result`: SillyTavern compares it as a KoboldCpp "
        "version, where any word counts as newer than every number.",
        responses={
            200: shape(
                "KoboldExtraVersion",
                {
                    "name": serializers.CharField(),
                    "version": serializers.CharField(),
                    "cluster_version": serializers.CharField(),
                    "streaming": serializers.BooleanField(),
                    "tokencount": serializers.CharField(),
                    "abort": serializers.CharField(),
                },
            )
        },
    )
    def get(self, request: Request) -> Response:
        return Response(
            {
                "name": "KoboldAI Cluster",
                "version": LITE_STREAMING_VERSION,
                "cluster_version": koboldcluster.__version__,
                "streaming": True,
                "tokencount": "estimate: a quarter of the characters, rounded up",
                "abort": "by the genkey sent with /api/v1/generate",
            }
        )


class GenerateView(AsyncAPIView):
    authentication_classes = [BearerApiKeyAuthentication]
    throttle_scope = "submit"

    class Input(GenerationParamsSerializer):
        prompt = PromptTextField()
        genkey = StrictCharField(
            required=False,
            max_length=100,
            help_text="Your name for this generation, for /api/extra/abort (as KoboldCpp).",
        )

    def get_exception_handler(self) -> ExceptionHandler:
        return kobold_exception_handler

    @extend_schema(
        operation_id="kobold_generate",
        tags=KOBOLD,
        summary="Generate text, waiting for it",
        description="KoboldAI's generate body: `prompt`, `n`, `max_length` (80), "
        "`max_context_length` (1024), the samplers, `stop_sequence`, `frmt*` flags; other "
        "fields are ignored. An ordinary request of the queue (priority, ledger, expiry); "
        "the answer waits for it up to KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS (then 504, and "
        "the request is cancelled, as it is when the caller disconnects).",
        parameters=[BEARER, IDEMPOTENCY_KEY_HEADER, TRUSTED_ONLY_HEADER],
        request=Input,
        responses={
            200: shape(
                "KoboldGenerated",
                {"results": shape("KoboldText", {"text": serializers.CharField()}, many=True)},
            ),
            400: error("ValidationError"),
            401: error("InvalidAPIKey"),
            429: error("TooManyPrompts, TooManyRequests"),
            502: error("RequestFaulted: the servers failed it 3 times."),
            503: error("NoServerAvailable: no server online (after a short grace)."),
            504: error("NoServerAvailable, Timeout: not served in time; cancelled."),
        },
    )
    async def post(self, request: Request) -> Response:
        user, generation, fit = await self.parse(request)
        status = await generate(user=user, request=generation)
        texts = [job.text for job in status.generations] or [""]
        headers = {LIMITS_HEADER: fit.header(), **servers_header(status)}
        return Response({"results": [{"text": text} for text in texts]}, headers=headers)

    async def parse(self, request: Request) -> tuple[User, GenerationRequest, Fit]:
        """The caller, the queue request of a KoboldAI generate body fitted to the servers
        online (as KoboldCpp fits a request to itself), and the lengths applied."""
        data = validated(self.Input, request.data)
        user = api_user(request) or await sync_to_async(anonymous_user)()
        genkey = data.pop("genkey", "")
        text = data.pop("prompt")
        shape_params, samplers = split_params(data)
        agent = request.META.get("HTTP_CLIENT_AGENT") or "KoboldAI API"
        generation = GenerationRequest(
            text=text,
            params=samplers,
            client_agent=agent,
            genkey=genkey,
            idempotency_key=idempotency_key(request),
            trusted_workers=trusted_only(request),
            **shape_params,
        )
        generation, fit = await fitted(user, generation)
        return user, generation, fit


class StreamView(GenerateView):
    @extend_schema(
        operation_id="kobold_generate_stream",
        tags=KOBOLD,
        summary="Generate text, streaming it (KoboldCpp's server-sent events)",
        description="The generate body (n = 1); the answer is `text/event-stream`: "
        '`event: message` / `data: {"token": "..."}` with each new piece as the server '
        'generates, then `data: {"token": "", "finish_reason": "stop"}`. The tokens add up '
        "to the stored generation. A server whose backend does not stream sends it all at "
        "the end. Disconnecting cancels the request.",
        parameters=[BEARER, IDEMPOTENCY_KEY_HEADER, TRUSTED_ONLY_HEADER],
        request=GenerateView.Input,
        responses={
            (200, "text/event-stream"): {"type": "string"},
            400: error("ValidationError"),
            401: error("InvalidAPIKey"),
            429: error("TooManyPrompts, TooManyRequests"),
            503: error("NoServerAvailable: no server online (after a short grace)."),
        },
    )
    async def post(self, request: Request) -> HttpResponseBase:
        user, generation, fit = await self.parse(request)
        if generation.n > 1:
            raise BadRequest("Streaming takes n = 1 only.", rc="ValidationError")
        prompt_id = await start(user=user, request=generation)
        headers = {LIMITS_HEADER: fit.header(), **await sync_to_async(outlook_headers)(prompt_id)}
        return event_stream(kobold_tokens(prompt_id=prompt_id), headers)


CHECK = shape(
    "KoboldCheck",
    {"results": shape("KoboldCheckText", {"text": serializers.CharField()}, many=True)},
)


class CheckView(KoboldView):
    throttle_scope = "status"

    class Input(serializers.Serializer):
        genkey = StrictCharField(required=False, allow_blank=True, max_length=100)

    @extend_schema(
        operation_id="kobold_generate_check",
        tags=KOBOLD,
        summary="The text generated so far (KoboldCpp's poll)",
        description="For your generation sent with this `genkey` (same API key, or "
        "anonymous): the text its server has generated so far, or the whole generation once "
        "done; empty without a genkey or when nothing is known.",
        parameters=[BEARER],
        request=Input,
        responses={200: CHECK},
    )
    def post(self, request: Request) -> Response:
        return self.answer(request, request.data or {})

    @extend_schema(
        operation_id="kobold_generate_check_get",
        tags=KOBOLD,
        summary="The text generated so far (KoboldCpp's poll, by GET)",
        description="As the POST, with `genkey` in the query.",
        parameters=[BEARER, OpenApiParameter("genkey", str, OpenApiParameter.QUERY)],
        responses={200: CHECK},
    )
    def get(self, request: Request) -> Response:
        return self.answer(request, request.query_params)

    def answer(self, request: Request, body: Any) -> Response:
        data = validated(self.Input, body)
        user = api_user(request) or anonymous_user()
        genkey = data.get("genkey") or ""
        text, headers = genkey_check(user=user, genkey=genkey) if genkey else ("", {})
        return Response({"results": [{"text": text}]}, headers=headers)


class AbortView(KoboldView):
    throttle_scope = "status"

    class Input(serializers.Serializer):
        genkey = StrictCharField(required=False, allow_blank=True, max_length=100)

    @extend_schema(
        operation_id="kobold_abort",
        tags=KOBOLD,
        summary="Cancel a waiting generation",
        description="Cancels your generation sent with this `genkey` (yours: same API key, "
        "or anonymous). Without a genkey nothing is cancelled (`success: false`): the "
        "cluster serves many callers at once. Disconnecting cancels a generation too.",
        parameters=[BEARER],
        request=Input,
        responses={200: shape("KoboldAbort", {"success": serializers.BooleanField()})},
    )
    def post(self, request: Request) -> Response:
        data = validated(self.Input, request.data if request.data else {})
        user = api_user(request) or anonymous_user()
        genkey = data.get("genkey") or ""
        return Response({"success": bool(genkey) and genkey_abort(user=user, genkey=genkey)})


class TokenCountView(KoboldView):
    class Input(serializers.Serializer):
        prompt = serializers.CharField(allow_blank=True, trim_whitespace=False)

    @extend_schema(
        operation_id="kobold_tokencount",
        tags=KOBOLD,
        summary="Estimate a text's tokens",
        description="An estimate by the cluster's token rule (a quarter of the characters, "
        "rounded up), not a model's tokenizer: `ids` is always empty.",
        request=Input,
        responses={
            200: shape(
                "KoboldTokenCount",
                {
                    "value": serializers.IntegerField(),
                    "ids": serializers.ListField(child=serializers.IntegerField()),
                    "estimate": serializers.BooleanField(),
                },
            )
        },
    )
    def post(self, request: Request) -> Response:
        data = validated(self.Input, request.data)
        return Response({"value": estimate_tokens(data["prompt"]), "ids": [], "estimate": True})
