"""The AI Horde v2 text API for generations, under /api/v2/ (research §2.1–§2.4, §2.7).

Thin views over the services the original API uses: a prompt sent here can be served through
the original pop, and the other way round. What differs is only the wire format.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import LenientApiKeyAuthentication, api_user
from accounts.identity import anonymous_user
from generations.api.fields import prompt_uuid
from generations.api.v2.params import HordeParamsSerializer
from generations.idempotency import IDEMPOTENCY_KEY_HEADER, idempotency_key
from generations.intake import GenerationRequest, prompt_create
from generations.params import PromptTextField, split_params
from generations.status import able_servers, prompt_cancel, prompt_status
from generations.status_shapes import StatusApi, status_body
from koboldcluster.api import parse_uuid, validated
from koboldcluster.errors import BadRequest, NotFound
from koboldcluster.fields import (
    InputSerializer,
    OptionField,
    StringListField,
    optional_text,
)
from koboldcluster.openapi import (
    APIKEY_HEADER,
    CLIENT_AGENT_HEADER,
    KUDOS_ARE_TOKENS,
    error,
    shape,
)

# The most servers a request may name (the AI Horde uses the first five).
MAX_LISTED_SERVERS = 5
UNKNOWN_CLIENT = "unknown:0:unknown"


def client_agent(request: Any) -> str:
    """`Client-Agent`, which horde-sdk spells `client_agent`: both reach us as one WSGI key
    when the web server passes them (gunicorn and nginx drop underscored names by default)."""
    return request.META.get("HTTP_CLIENT_AGENT") or UNKNOWN_CLIENT


class HordeParams(serializers.DictField):
    """`params`, documented as the serializer that checks them."""


ASYNC_ACCEPTED = shape(
    "HordeRequestAccepted",
    {
        "id": serializers.UUIDField(help_text="Poll it at /api/v2/generate/text/status/{id}."),
        "kudos": serializers.FloatField(
            help_text="The most the request can cost, in tokens: n × max_length. "
            + KUDOS_ARE_TOKENS
        ),
        "message": serializers.CharField(
            required=False, help_text="Only when no active server can serve it yet."
        ),
        "warnings": shape(
            "HordeWarning",
            {"code": serializers.CharField(), "message": serializers.CharField()},
            many=True,
            required=False,
        ),
    },
)


class TextAsyncView(APIView):
    throttle_scope = "submit"

    class Input(InputSerializer):
        prompt = PromptTextField(allow_blank=True, help_text='The prompt; "" is refused.')
        params = HordeParams(
            required=False,
            default=dict,
            help_text="KoboldAI generate parameters: n (1), max_length (80, 16–4096), "
            "max_context_length (2048, ≥ max_length), temperature, top_p, top_k (≤ 100), "
            "top_a, typical, tfs, min_p, rep_pen, rep_pen_range, rep_pen_slope, "
            "smoothing_factor, dynatemp_range, dynatemp_exponent, sampler_order, "
            "stop_sequence, use_default_badwordsids, singleline, frmt* flags. Unknown keys "
            "are ignored and never reach a server.",
        )
        models = StringListField(
            required=False, max_length=200, help_text="Acceptable models; empty: any."
        )
        workers = StringListField(
            required=False,
            max_length=100,
            item_max_length=64,
            help_text="Server ids allowed to serve it (the first 5 count).",
        )
        worker_blacklist = OptionField(False, help_text="`workers` is a deny list instead.")
        trusted_workers = OptionField(False, help_text="Only servers of trusted accounts.")
        slow_workers = OptionField(
            True, help_text="false: only servers measured faster than the threshold."
        )
        softprompt = optional_text(
            help_text='Only servers offering this soft prompt; "" or null: none.', max_length=255
        )
        dry_run = OptionField(False, help_text="Only answer what it would cost (200 {kudos}).")
        disable_batching = OptionField(
            False,
            help_text="Each server gets one of the n at a time (n > 1 needs a trusted account).",
        )
        webhook = optional_text(
            help_text="Must be https://; not called by this cluster.", max_length=1024
        )
        style = optional_text(help_text="This cluster has no styles: 404.", max_length=1024)
        proxied_account = optional_text(
            help_text="For service accounts, which this cluster has not."
        )
        extra_source_images = serializers.ListField(
            required=False, allow_null=True, help_text="Not for text: must be empty."
        )
        nsfw = OptionField(True, help_text="Stored; text requests are not filtered by it.")
        validated_backends = OptionField(False, help_text="Accepted and ignored.")
        extra_slow_workers = OptionField(False, help_text="Accepted and ignored.")
        allow_downgrade = OptionField(
            False, help_text="Accepted and ignored: nothing is paid upfront here."
        )

        def validate_params(self, value: dict) -> dict:
            return validated(HordeParamsSerializer, value)

    @extend_schema(
        operation_id="horde_text_async",
        tags=["AI Horde v2: generate"],
        summary="Ask for text generations",
        description="Queue `n` generations of a prompt and answer its id at once. The request "
        "is yours with your `apikey` (without one: the anonymous user, lowest priority). "
        "It expires 10 minutes after its last activity; every status poll counts.",
        parameters=[APIKEY_HEADER, CLIENT_AGENT_HEADER, IDEMPOTENCY_KEY_HEADER],
        request=Input,
        responses={
            202: ASYNC_ACCEPTED,
            200: OpenApiResponse(
                shape("HordeDryRun", {"kudos": serializers.FloatField()}),
                description="dry_run: the most it would cost, in tokens.",
            ),
            400: error("Invalid input (MissingPrompt, TokenOverflow, …)."),
            401: error("InvalidAPIKey"),
            404: error("WorkerNotFound, StyleNotFound"),
            429: error("TooManyPrompts (concurrency), TooManyRequests (rate limit)"),
        },
    )
    def post(self, request: Request) -> Response:
        data = validated(self.Input, request.data)
        return Response(self.reply(data, request), status=self.status_for(data))

    @staticmethod
    def status_for(data: dict[str, Any]) -> int:
        return 200 if data["dry_run"] else 202

    @staticmethod
    def reply(data: dict[str, Any], request: Any) -> dict[str, Any]:
        """The answer to a valid request (this view's, and the direct lane's)."""
        user = api_user(request) or anonymous_user()
        generation = _generation_request(data, client_agent(request), idempotency_key(request))
        if data["dry_run"]:
            return {"kudos": float(generation.tokens_at_most())}
        prompt = prompt_create(user=user, request=generation)
        body: dict[str, Any] = {"id": str(prompt.id), "kudos": float(generation.tokens_at_most())}
        warnings = []
        if not able_servers(prompt=prompt):
            message = (
                "Warning: No available workers can fulfill this request. It will expire in 10 "
                "minutes unless one checks in. Consider your models and lengths."
            )
            body["message"] = message
            warnings.append({"code": "NoAvailableWorker", "message": message})
        if data.get("webhook"):
            warnings.append(
                {"code": "WebhookNotSupported", "message": "This cluster does not call webhooks."}
            )
        if warnings:
            body["warnings"] = warnings
        return body


def _generation_request(data: dict[str, Any], agent: str, key: str = "") -> GenerationRequest:
    """The AI Horde's request options as the cluster's GenerationRequest, refusing what it
    cannot honour with the horde's error codes."""
    if data.get("style"):
        raise NotFound(
            f"Style {data['style']} is unknown: this cluster has none.", rc="StyleNotFound"
        )
    webhook = data.get("webhook")
    if webhook and not webhook.startswith("https://"):
        raise BadRequest("A webhook must be an https:// URL.", rc="BadRequest")
    if data.get("proxied_account"):
        raise BadRequest(
            "Only service accounts may send proxied_account.", rc="OnlyServiceAccountProxy"
        )
    if data.get("extra_source_images"):
        raise BadRequest(
            "Text requests take no extra source images.", rc="InvalidExtraSourceImages."
        )
    if data["prompt"] == "":
        raise BadRequest("The prompt is empty.", rc="MissingPrompt")
    shape_params, samplers = split_params(data["params"])
    batching = not data["disable_batching"]
    servers = [
        parse_uuid(value, rc="WorkerNotFound", what="Server")
        for value in (data.get("workers") or [])[:MAX_LISTED_SERVERS]
    ]
    return GenerationRequest(
        text=data["prompt"],
        params=samplers,
        models=data.get("models") or [],
        client_agent=agent,
        softprompt=data.get("softprompt") or "",
        trusted_workers=data["trusted_workers"],
        slow_workers=data["slow_workers"],
        server_ids=servers,
        servers_excluded=data["worker_blacklist"],
        nsfw=data["nsfw"],
        batching=batching,
        idempotency_key=key,
        **shape_params,
    )


GENERATION = shape(
    "HordeGeneration",
    {
        "id": serializers.UUIDField(help_text="The job's id."),
        "worker_id": serializers.CharField(help_text='The server\'s id ("" if it was deleted).'),
        "worker_name": serializers.CharField(),
        "workers": shape(
            "HordeGenerationWorker",
            {"id": serializers.CharField(), "name": serializers.CharField()},
            many=True,
            help_text="Every server that produced the text, first to last: more than one when "
            "a server dropped out and the next continued its text (this cluster's extension; "
            "the last is worker_id/worker_name).",
        ),
        "model": serializers.CharField(help_text='Never null; "" if unknown.'),
        "state": serializers.ChoiceField(["ok", "censored", "csam"]),
        "text": serializers.CharField(),
        "seed": serializers.IntegerField(),
        "gen_metadata": serializers.ListField(child=serializers.DictField()),
    },
    many=True,
)

# The status this API answers (generations.status_shapes).
STATUS_API = StatusApi.HORDE

STATUS = shape(
    "HordeRequestStatus",
    {
        "finished": serializers.IntegerField(help_text="Generations delivered."),
        "processing": serializers.IntegerField(help_text="Jobs a server is working on."),
        "restarted": serializers.IntegerField(help_text="Jobs that failed or timed out."),
        "waiting": serializers.IntegerField(help_text="Slots not yet handed to a server."),
        "done": serializers.BooleanField(
            help_text="Nothing waiting and nothing in flight: all n delivered, or the request "
            "was cancelled or faulted."
        ),
        "faulted": serializers.BooleanField(help_text="Given up after 3 failed jobs."),
        "wait_time": serializers.IntegerField(help_text="Estimated seconds until done."),
        "queue_position": serializers.IntegerField(
            help_text="1-based place in the queue; 0 when nothing waits; 1001 means beyond 1000."
        ),
        "kudos": serializers.FloatField(
            help_text="Tokens charged so far: the delivered generations', and the text kept "
            "from servers that dropped out."
        ),
        "is_possible": serializers.BooleanField(
            help_text="Some active server could serve it (or one is at work on it)."
        ),
        "processing_workers": shape(
            "HordeProcessingWorker",
            {"id": serializers.CharField(), "name": serializers.CharField()},
            many=True,
            help_text="The servers at work on it now (this cluster's extension).",
        ),
        "generations": GENERATION,
    },
)


class TextStatusView(APIView):
    throttle_scope = "status"
    # Anyone holding the id may poll or cancel; a key only selects the account's rate limit.
    authentication_classes = [LenientApiKeyAuthentication]

    @extend_schema(
        operation_id="horde_text_status",
        tags=["AI Horde v2: generate"],
        summary="Poll a request",
        description="No key needed: the id is the secret. A poll keeps the request alive "
        "(it expires 10 minutes after its last activity).",
        responses={200: STATUS, 404: error("RequestNotFound: unknown or expired.")},
    )
    def get(self, request: Request, prompt_id: str) -> Response:
        return Response(self.reply(prompt_uuid(prompt_id)))

    @staticmethod
    def reply(prompt_id: object) -> dict[str, Any]:
        return status_body(
            prompt_status(prompt_id=prompt_id, outlook=STATUS_API.outlook), STATUS_API
        )

    @extend_schema(
        operation_id="horde_text_cancel",
        tags=["AI Horde v2: generate"],
        summary="Cancel a request",
        description="Nothing more is handed out; jobs in flight still finish and are paid. "
        "Answers the status after the cancel (`waiting` is 0).",
        responses={200: STATUS, 404: error("RequestNotFound")},
    )
    def delete(self, request: Request, prompt_id: str) -> Response:
        status = prompt_cancel(prompt_id=prompt_uuid(prompt_id), outlook=STATUS_API.outlook)
        return Response(status_body(status, STATUS_API))
