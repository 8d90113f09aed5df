"""The AI Horde v2 text API for generations, under /api/v2/ (research §2.1–§2.4, §2.7).

Thin views over the services the original API uses: a prompt sent here can be served through
the original pop, and the other way round. What differs is only the wire format.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import HasApiKey, LenientApiKeyAuthentication, api_user
from accounts.identity import anonymous_user
from generations.delivery import CSAM_METADATA, job_submit
from generations.intake import GenerationRequest, prompt_create
from generations.long_poll import PopAttempt, PopReply, WaitField, respond
from generations.models import Job
from generations.queue import PopResult, job_pop, jobs_claim
from generations.serializers import HordeParamsSerializer, PromptTextField, split_params
from generations.status import PromptStatus, able_servers, prompt_cancel, prompt_status
from generations.views import SERVER_LIMIT, GenerationField, prompt_uuid
from koboldcluster.api import parse_uuid, validated
from koboldcluster.errors import BadRequest, NotFound
from koboldcluster.fields import (
    InputSerializer,
    OptionField,
    StrictCharField,
    StrictIntegerField,
    StringListField,
    optional_text,
)
from koboldcluster.openapi import (
    APIKEY_HEADER,
    APIKEY_HEADER_REQUIRED,
    CLIENT_AGENT_HEADER,
    KUDOS_ARE_TOKENS,
    error,
    shape,
)
from servers.models import Server
from servers.services import CheckIn, Credentials

# The most servers a request may name (the AI Horde uses the first five).
MAX_LISTED_SERVERS = 5
MAX_GEN_METADATA = 50
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
        parameters=[APIKEY_HEADER, CLIENT_AGENT_HEADER],
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
        generation = _generation_request(data, client_agent(request))
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


def _generation_request(data: dict[str, Any], agent: str) -> GenerationRequest:
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
        **shape_params,
    )


GENERATION = shape(
    "HordeGeneration",
    {
        "id": serializers.UUIDField(help_text="The job's id."),
        "worker_id": serializers.CharField(help_text='The server\'s id ("" if it was deleted).'),
        "worker_name": serializers.CharField(),
        "model": serializers.CharField(help_text='Never null; "" if unknown.'),
        "state": serializers.ChoiceField(["ok", "censored", "csam"]),
        "text": serializers.CharField(),
        "seed": serializers.IntegerField(),
        "gen_metadata": serializers.ListField(child=serializers.DictField()),
    },
    many=True,
)

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
            help_text="Tokens charged so far (those of the delivered generations)."
        ),
        "is_possible": serializers.BooleanField(
            help_text="Some active server could serve it (or one is at work on it)."
        ),
        "generations": GENERATION,
    },
)


def generation_state(job: Job) -> str:
    if any(
        {"type": m.get("type"), "value": m.get("value")} == CSAM_METADATA for m in job.gen_metadata
    ):
        return "csam"
    return "censored" if job.censored else "ok"


def status_body(status: PromptStatus) -> dict[str, Any]:
    """The AI Horde's status object; every key always present, counts as JSON integers."""
    outlook = status.outlook
    assert outlook is not None  # the views ask for it
    return {
        "finished": status.finished,
        "processing": status.processing,
        "restarted": status.restarted,
        "waiting": status.waiting,
        "done": status.done,
        "faulted": status.faulted,
        "wait_time": outlook.wait_time,
        "queue_position": outlook.queue_position,
        "kudos": float(status.tokens),
        "is_possible": outlook.is_possible,
        "generations": [
            {
                "id": str(job.id),
                "worker_id": str(job.server_id) if job.server_id else "",
                "worker_name": status.server_name(job),
                "model": job.model,
                "state": generation_state(job),
                "text": job.text,
                "seed": job.seed or 0,
                "gen_metadata": job.gen_metadata,
            }
            for job in status.generations
        ],
    }


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
        return status_body(prompt_status(prompt_id=prompt_id, outlook=True))

    @extend_schema(
        operation_id="horde_text_cancel",
        tags=["AI Horde v2: generate"],
        summary="Cancel a request",
        description="Nothing more is handed out; jobs in flight still finish and are paid. "
        "Answers the status after the cancel (`waiting` is 0).",
        responses={200: STATUS, 404: error("RequestNotFound")},
    )
    def delete(self, request: Request, prompt_id: str) -> Response:
        status = prompt_cancel(prompt_id=prompt_uuid(prompt_id), outlook=True)
        return Response(status_body(status))


SKIPPED = shape(
    "HordeSkipped",
    {
        # Absent for a paused server, which is quietly given nothing.
        reason: serializers.IntegerField(help_text=text, required=False)
        for reason, text in {
            "models": "Waiting requests for other models.",
            "max_context_length": "…asking for more context than this server takes.",
            "max_length": "…asking for more tokens than this server generates.",
            "worker_id": "…whose server list excludes this server.",
            "untrusted": "…for trusted servers only.",
            "performance": "…for fast servers only.",
            "matching_softprompt": "…needing a soft prompt this server lacks.",
        }.items()
    },
)

POP_ANSWER = shape(
    "HordeJobPop",
    {
        "id": serializers.UUIDField(allow_null=True, help_text="The first job, or null."),
        "ids": serializers.ListField(
            child=serializers.UUIDField(), help_text="Every job handed out (1..amount)."
        ),
        "payload": serializers.DictField(
            help_text="What to post to KoboldAI's /api/latest/generate: prompt, n (1), "
            "max_length, max_context_length and the sampler settings the client set; {} "
            "without a job."
        ),
        "model": serializers.CharField(allow_null=True),
        "softprompt": serializers.CharField(
            allow_null=True, help_text='The soft prompt to load ("" for none); null without a job.'
        ),
        "ttl": serializers.IntegerField(allow_null=True, help_text="Seconds to submit in."),
        "skipped": SKIPPED,
        "messages": serializers.ListField(child=serializers.DictField()),
        "extra_source_images": serializers.ListField(allow_null=True),
    },
)

# horde-sdk validates the payload it pops (max_length ≥ 16, max_context_length ≥ 80); a
# prompt from the original API may ask for less, which is served within the larger limits.
SDK_MIN_LENGTH = 16
SDK_MIN_CONTEXT = 80


def worker_payload(job: Job) -> dict[str, Any]:
    payload = job.payload()
    payload["max_length"] = max(payload["max_length"], SDK_MIN_LENGTH)
    payload["max_context_length"] = max(payload["max_context_length"], SDK_MIN_CONTEXT)
    return payload


class TextPopView(PopReply, APIView):
    throttle_scope = "worker"
    permission_classes = [HasApiKey]

    class Input(InputSerializer):
        name = StrictCharField(max_length=100, help_text="The server's unique name.")
        models = StringListField(min_length=1, max_length=200, help_text="Models it runs.")
        max_length = StrictIntegerField(min_value=1, max_value=SERVER_LIMIT, default=512)
        max_context_length = StrictIntegerField(min_value=1, max_value=SERVER_LIMIT, default=2048)
        softprompts = StringListField(
            required=False, max_length=1000, item_max_length=1000, help_text="Its soft prompts."
        )
        priority_usernames = StringListField(
            required=False,
            max_length=100,
            child=StrictCharField(max_length=255, allow_blank=True),
            help_text="Users served first: alias#id.",
        )
        bridge_agent = StrictCharField(
            max_length=1000, required=False, allow_blank=True, default=UNKNOWN_CLIENT
        )
        threads = StrictIntegerField(min_value=1, max_value=50, default=1)
        amount = StrictIntegerField(
            min_value=1, max_value=20, default=1, help_text="The most jobs to take at once."
        )
        nsfw = OptionField(True)
        wait = WaitField()

    @extend_schema(
        operation_id="horde_text_pop",
        tags=["AI Horde v2: servers"],
        summary="A server asks for work",
        description="Checks the server in (creating it for the key's account on its first pop) "
        "and hands out up to `amount` jobs of one request. Every key is always present. With "
        "`wait`, a pop without work is held up to that many seconds until a job arrives.",
        parameters=[APIKEY_HEADER_REQUIRED],
        request=Input,
        responses={
            200: POP_ANSWER,
            400: error("Invalid input, InvalidPriorityUsername"),
            401: error("InvalidAPIKey"),
            403: error("AnonForbiddenWorker, WrongCredentials, WorkerMaintenance"),
        },
    )
    def post(self, request: Request) -> Response:
        data = validated(self.Input, request.data)
        result = self.pop_once(data, request)
        attempt = partial(
            self.pop,
            server=result.server,
            priority_user_ids=result.first_users,
            amount=data["amount"],
        )
        return respond(self.answer(result), wait=data["wait"], attempt=attempt)

    @staticmethod
    def pop_once(data: dict[str, Any], request: Any) -> PopResult:
        """Check the server in and try once."""
        check_in = CheckIn(
            name=data["name"],
            models=data["models"],
            max_length=data["max_length"],
            max_context_length=data["max_context_length"],
            bridge_agent=data["bridge_agent"] or UNKNOWN_CLIENT,
            threads=data["threads"],
            # The AI Horde's limits: names cut to 100 characters, at most 200 kept.
            softprompts=tuple(name[:100] for name in (data.get("softprompts") or [])[:200]),
            nsfw=data["nsfw"],
        )
        return job_pop(
            credentials=Credentials(api_user=api_user(request)),
            check_in=check_in,
            priority_usernames=data.get("priority_usernames") or [],
            amount=data["amount"],
        )

    @classmethod
    def pop(cls, *, server: Server, priority_user_ids: set[int], amount: int) -> PopAttempt:
        """One more try for a waiting pop (held, it repeats this): the claim alone."""
        result = jobs_claim(server=server, priority_user_ids=priority_user_ids, amount=amount)
        return cls.answer(result)

    @staticmethod
    def answer(result: PopResult) -> PopAttempt:
        """The AI Horde's answer to a pop: every key always present."""
        body: dict[str, Any] = {
            "id": None,
            "ids": [],
            "payload": {},
            "model": None,
            "softprompt": None,
            "ttl": None,
            "skipped": result.skipped,
            "messages": [],
            "extra_source_images": None,
        }
        if result.jobs:
            job = result.jobs[0]
            body.update(
                id=str(job.id),
                ids=[str(j.id) for j in result.jobs],
                payload=worker_payload(job),
                model=job.model,
                # "" rather than the AI Horde's null: the KoboldAI bridge reloads the soft
                # prompt whenever this differs from KoboldAI's current one, which is "".
                softprompt=job.prompt.softprompt,
                ttl=result.ttl,
            )
        return PopAttempt.of(result, body)


class GenMetadataInput(InputSerializer):
    # What the AI Horde accepts for text, and so what every client can read back.
    type = serializers.ChoiceField(["censorship"])
    value = serializers.ChoiceField(["csam"])
    ref = StrictCharField(max_length=255, required=False)


class TextSubmitView(APIView):
    throttle_scope = "worker"
    permission_classes = [HasApiKey]

    class Input(InputSerializer):
        id = serializers.UUIDField(help_text="A job id from the pop's `ids`.")
        generation = GenerationField(max_length=1_000_000, required=False, default="")
        state = serializers.ChoiceField(["ok", "censored", "faulted", "csam"], default="ok")
        seed = StrictIntegerField(required=False, allow_null=True)
        token_count = StrictIntegerField(
            min_value=0,
            required=False,
            help_text="This cluster's extension: the backend's count of generated tokens, "
            "paid when plausible.",
        )
        gen_metadata = serializers.ListField(
            child=GenMetadataInput(), required=False, allow_null=True
        )

    @extend_schema(
        operation_id="horde_text_submit",
        tags=["AI Horde v2: servers"],
        summary="A server returns a generation",
        description="Accepted once and paid at once: `reward` is the generation's tokens, "
        "credited to the server's account and charged to the requester. `faulted` gives "
        "the job back to the queue (reward 0). A late result is still accepted while its "
        "slot waits for a server; otherwise 404 AbortedGen. " + KUDOS_ARE_TOKENS,
        parameters=[APIKEY_HEADER_REQUIRED],
        request=Input,
        responses={
            200: shape(
                "HordeReward",
                {"reward": serializers.FloatField(help_text="Tokens credited (0 for faulted).")},
            ),
            400: error('DuplicateGen ("already submitted"), invalid input'),
            401: error("InvalidAPIKey"),
            403: error("WrongCredentials: the job is another account's server's"),
            404: error("InvalidJobID (unknown or expired), AbortedGen (timed out, slot gone)"),
        },
    )
    def post(self, request: Request) -> Response:
        return Response(self.reply(validated(self.Input, request.data), request))

    @staticmethod
    def reply(data: dict[str, Any], request: Any) -> dict[str, Any]:
        """The answer to a valid submit (this view's, and the direct lane's)."""
        user = api_user(request)
        metadata = data.get("gen_metadata") or []
        if len(metadata) > MAX_GEN_METADATA:
            raise BadRequest(f"At most {MAX_GEN_METADATA} gen_metadata entries.")
        reward = job_submit(
            job_id=data["id"],
            credentials=Credentials(api_user=user),
            text=data["generation"],
            state=data["state"],
            seed=data.get("seed"),
            gen_metadata=[dict(entry) for entry in metadata],
            token_count=data.get("token_count"),
        )
        return {"reward": float(reward)}
