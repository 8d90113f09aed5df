"""The original cluster API: submit a prompt, poll it, pop a job, submit a generation."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import LenientApiKeyAuthentication, api_user
from accounts.identity import user_for_request
from generations.api.fields import (
    SERVER_LIMIT,
    GenerationField,
    PromptCounts,
    prompt_uuid,
    server_credentials,
)
from generations.delivery import job_submit
from generations.idempotency import IDEMPOTENCY_KEY_HEADER, idempotency_key
from generations.intake import GenerationRequest, prompt_create
from generations.long_poll import PopAttempt, PopReply, WaitField, respond
from generations.params import (
    GenerationParamsSerializer,
    PromptTextField,
    split_params,
)
from generations.queue import PopResult, job_pop, jobs_claim
from generations.status import prompt_cancel, prompt_status
from generations.status_shapes import StatusApi, status_body
from koboldcluster.api import validated
from koboldcluster.fields import (
    BIGINT_RANGE,
    INT_MAX,
    InputSerializer,
    OptionField,
    StrictBooleanField,
    StrictCharField,
    StrictIntegerField,
    StringListField,
    optional_text,
)
from koboldcluster.openapi import KUDOS_ARE_TOKENS, error, shape
from servers.models import Server
from servers.services import CheckIn

ORIGINAL = ["Original cluster API"]


class PromptCreateView(APIView):
    throttle_scope = "submit"

    class Input(InputSerializer):
        prompt = PromptTextField()
        # Missing params still pass through validate_params, which fills in the defaults.
        params = serializers.DictField(required=False, default=dict)
        username = optional_text(max_length=150)
        password = optional_text(max_length=1024, trim_whitespace=False)
        models = StringListField(required=False, max_length=200)
        trusted_workers = StrictBooleanField(
            required=False,
            default=False,
            help_text="Only servers of trusted accounts, not paused (README: Trust and quality).",
        )

        def validate_params(self, value: dict) -> dict:
            return validated(GenerationParamsSerializer, value)

    @extend_schema(
        operation_id="prompt_create",
        tags=ORIGINAL,
        summary="Ask for generations",
        description="Queue `n` generations of a prompt; poll the id. Without an `apikey`, "
        "`username` tracks usage (a name with credentials needs its password or key). "
        "`params` are KoboldAI's generate parameters (`max_content_length` is the context "
        "length); defaults n 1, max_length 80, max_context_length 1024.",
        parameters=[IDEMPOTENCY_KEY_HEADER],
        request=Input,
        responses={
            200: shape("PromptCreated", {"id": serializers.UUIDField()}),
            400: error("ValidationError"),
            401: error("CredentialsRequired, InvalidCredentials, InvalidAPIKey"),
            429: error("TooManyPrompts, TooManyRequests"),
        },
    )
    def post(self, request: Request) -> Response:
        return Response(self.reply(validated(self.Input, request.data), request))

    @staticmethod
    def reply(data: dict[str, Any], request: Any) -> dict[str, Any]:
        """The answer to a valid request (this view's, and the direct lane's)."""
        user = user_for_request(
            username=data.get("username"),
            password=data.get("password"),
            api_user=api_user(request),
        )
        shape, samplers = split_params(data["params"])
        generation = GenerationRequest(
            text=data["prompt"],
            params=samplers,
            models=data.get("models") or [],
            idempotency_key=idempotency_key(request),
            trusted_workers=data.get("trusted_workers", False),
            **shape,
        )
        prompt = prompt_create(user=user, request=generation)
        return {"id": str(prompt.id)}


# The status this API answers (generations.status_shapes).
STATUS_API = StatusApi.ORIGINAL

ORIGINAL_STATUS = shape(
    "PromptStatus",
    {
        "finished": serializers.IntegerField(),
        "processing": serializers.IntegerField(),
        "restarted": serializers.IntegerField(help_text="Jobs that failed or timed out."),
        "waiting": serializers.IntegerField(),
        "done": serializers.BooleanField(help_text="Nothing waiting or in progress."),
        "faulted": serializers.BooleanField(),
        "generations": serializers.ListField(child=serializers.CharField()),
    },
)


class PromptStatusView(APIView):
    throttle_scope = "status"
    # Anyone holding the id may poll or cancel; a key only selects the account's rate limit.
    authentication_classes = [LenientApiKeyAuthentication]

    @extend_schema(
        operation_id="prompt_status",
        tags=ORIGINAL,
        summary="Poll a request",
        description="A poll keeps the request alive (10 minutes after its last activity).",
        responses={200: ORIGINAL_STATUS, 404: error("RequestNotFound")},
    )
    def get(self, request: Request, prompt_id: str) -> Response:
        return Response(self.reply(prompt_uuid(prompt_id)))

    @staticmethod
    def reply(prompt_id: uuid.UUID) -> dict[str, Any]:
        return status_body(
            prompt_status(prompt_id=prompt_id, outlook=STATUS_API.outlook), STATUS_API
        )

    @extend_schema(
        operation_id="prompt_cancel",
        tags=ORIGINAL,
        summary="Cancel a request",
        description="Nothing more is handed out; jobs in flight still finish and are paid.",
        responses={200: ORIGINAL_STATUS, 404: error("RequestNotFound")},
    )
    def delete(self, request: Request, prompt_id: str) -> Response:
        status = prompt_cancel(prompt_id=prompt_uuid(prompt_id), outlook=STATUS_API.outlook)
        return Response(status_body(status, STATUS_API))


class PopView(PopReply, APIView):
    throttle_scope = "worker"

    class Input(InputSerializer):
        username = optional_text(max_length=150)
        password = optional_text(max_length=1024, trim_whitespace=False)
        name = StrictCharField(max_length=100)
        model = StrictCharField(max_length=255, required=False, allow_null=True)
        models = StringListField(required=False, max_length=200)
        max_length = StrictIntegerField(min_value=1, max_value=SERVER_LIMIT, default=512)
        max_content_length = StrictIntegerField(
            min_value=1, max_value=SERVER_LIMIT, required=False, allow_null=True
        )
        max_context_length = StrictIntegerField(
            min_value=1, max_value=SERVER_LIMIT, required=False, allow_null=True
        )
        bridge_agent = optional_text(max_length=1000)
        threads = StrictIntegerField(min_value=1, max_value=50, default=1)
        wait = WaitField()
        leaving = OptionField(
            False,
            help_text="The server is stopping: it gets no job and is shown as inactive at once "
            "instead of after SERVER_STALE_SECONDS (this cluster's extension).",
        )
        # Users served first: `alias#id` (the AI Horde's form) or plain usernames.
        priority_usernames = StringListField(
            required=False,
            max_length=100,
            child=StrictCharField(max_length=255, allow_blank=True),  # "" gets the rc below
        )

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if not attrs.get("model") and not attrs.get("models"):
                raise serializers.ValidationError({"model": "This field is required."})
            return attrs

    @extend_schema(
        operation_id="server_pop",
        tags=ORIGINAL,
        summary="A server asks for work",
        description="The first pop with a new `username` creates that account with the "
        "password; an `apikey` header replaces both. Without work: `{id: null, skipped}`; "
        "with `wait`, only once no job arrived within that many seconds.",
        request=Input,
        responses={
            200: shape(
                "ServerPop",
                {
                    "id": serializers.UUIDField(allow_null=True),
                    "payload": serializers.DictField(required=False),
                    "ttl": serializers.IntegerField(required=False),
                    "skipped": serializers.DictField(required=False),
                    "paused_reason": serializers.CharField(
                        required=False, help_text="A paused server without a job: why."
                    ),
                },
            ),
            401: error("CredentialsRequired, InvalidCredentials"),
            403: error("WrongCredentials, AnonForbiddenWorker, WorkerMaintenance, TooManyWorkers"),
            409: error("NameInUse: an unclaimed name's prompts are not over yet"),
        },
    )
    def post(self, request: Request) -> Response:
        data = validated(self.Input, request.data)
        result = self.pop_once(data, request)
        attempt = partial(self.pop, server=result.server, priority_user_ids=result.first_users)
        wait = 0 if data["leaving"] else data["wait"]
        return respond(
            self.answer(result), wait=wait, attempt=attempt, account=result.server.owner_id
        )

    @staticmethod
    def pop_once(data: dict[str, Any], request: Any) -> PopResult:
        """Check the server in and try once (a leaving server: check it out)."""
        check_in = CheckIn(
            name=data["name"],
            models=data.get("models") or [data["model"]],
            max_length=data["max_length"],
            max_context_length=(
                data.get("max_context_length") or data.get("max_content_length") or 2048
            ),
            bridge_agent=data.get("bridge_agent") or "",
            threads=data["threads"],
        )
        return job_pop(
            credentials=server_credentials(request, data),
            check_in=check_in,
            priority_usernames=data.get("priority_usernames") or [],
            leaving=data["leaving"],
        )

    @classmethod
    def pop(cls, *, server: Server, priority_user_ids: set[int]) -> PopAttempt:
        """One more try for a waiting pop (held, it repeats this): the claim alone."""
        return cls.answer(jobs_claim(server=server, priority_user_ids=priority_user_ids))

    @staticmethod
    def answer(result: PopResult) -> PopAttempt:
        """The original API's answer to a pop."""
        if result.job is None:
            # The original API's three reasons, in its spelling ({} for a paused server).
            names = {"model": "models", "max_content_length": "max_context_length"}
            skipped = {
                name: result.skipped[names.get(name, name)]
                for name in ("model", "max_content_length", "max_length")
                if result.skipped
            }
            body: dict[str, Any] = {"id": None, "skipped": skipped}
            if result.paused_reason:
                body["paused_reason"] = result.paused_reason
            return PopAttempt.of(result, body)
        body = {"id": str(result.job.id), "payload": result.job.payload(), "ttl": result.ttl}
        return PopAttempt.of(result, body)


class SubmitView(APIView):
    throttle_scope = "worker"

    class Input(PromptCounts, InputSerializer):
        id = serializers.UUIDField()
        password = optional_text(max_length=1024, trim_whitespace=False)
        generation = GenerationField(max_length=1_000_000)
        state = serializers.ChoiceField(["ok", "faulted", "censored"], default="ok")
        seed = StrictIntegerField(required=False, allow_null=True, **BIGINT_RANGE)
        token_count = StrictIntegerField(
            min_value=0,
            max_value=INT_MAX,
            required=False,
            help_text="The backend's count of generated tokens; paid when plausible.",
        )

    @extend_schema(
        operation_id="server_submit",
        tags=ORIGINAL,
        summary="A server returns a generation",
        description="`reward` is the generation's tokens. " + KUDOS_ARE_TOKENS,
        request=Input,
        responses={
            200: shape("ServerReward", {"reward": serializers.IntegerField()}),
            400: error('DuplicateGen ("already submitted")'),
            401: error("CredentialsRequired, InvalidCredentials: the server's account's password"),
            403: error("WrongCredentials: the job is another account's server's"),
            404: error("InvalidJobID, AbortedGen"),
        },
    )
    def post(self, request: Request) -> Response:
        return Response(self.reply(validated(self.Input, request.data), request))

    @staticmethod
    def reply(data: dict[str, Any], request: Any) -> dict[str, Any]:
        reward = job_submit(
            job_id=data["id"],
            credentials=server_credentials(request, data),
            text=data["generation"],
            state=data["state"],
            seed=data.get("seed"),
            token_count=data.get("token_count"),
            prompt_tokens=data.get("prompt_tokens"),
            prompt_trimmed=data.get("prompt_trimmed", 0),
        )
        return {"reward": reward}
