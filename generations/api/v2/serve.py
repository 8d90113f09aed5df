"""The AI Horde v2 text API for the servers (its "workers"): pop and submit (research §2.3,
§2.4). Thin views over the services the original API's pop and submit use."""

from __future__ import annotations

from functools import partial
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import HasApiKey, api_user
from generations.api.fields import SERVER_LIMIT, GenerationField, PromptCounts
from generations.api.v2.views import UNKNOWN_CLIENT
from generations.delivery import job_submit
from generations.long_poll import PopAttempt, PopReply, WaitField, respond
from generations.models import Job
from generations.queue import PopResult, job_pop, jobs_claim
from koboldcluster.api import validated
from koboldcluster.errors import BadRequest
from koboldcluster.fields import (
    BIGINT_RANGE,
    INT_MAX,
    BoundedListField,
    InputSerializer,
    OptionField,
    StrictCharField,
    StrictIntegerField,
    StringListField,
)
from koboldcluster.openapi import APIKEY_HEADER_REQUIRED, KUDOS_ARE_TOKENS, error, shape
from servers.models import Server
from servers.services import CheckIn, Credentials

# The most gen_metadata entries a submit may carry.
MAX_GEN_METADATA = 50


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
        "paused_reason": serializers.CharField(
            required=False,
            help_text="Only for a paused server without a job: why, and what to do "
            "(README: Trust and quality).",
        ),
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
        leaving = OptionField(
            False,
            help_text="The server is stopping: it gets no job and is shown as inactive at once "
            "instead of after SERVER_STALE_SECONDS (this cluster's extension).",
        )

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
            403: error("AnonForbiddenWorker, WrongCredentials, WorkerMaintenance, TooManyWorkers"),
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
        wait = 0 if data["leaving"] else data["wait"]
        return respond(
            self.answer(result), wait=wait, attempt=attempt, account=result.server.owner_id
        )

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
            leaving=data["leaving"],
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
        elif result.paused_reason:
            body["paused_reason"] = result.paused_reason
        return PopAttempt.of(result, body)


class GenMetadataInput(InputSerializer):
    # What the AI Horde accepts for text, and so what every client can read back.
    type = serializers.ChoiceField(["censorship"])
    value = serializers.ChoiceField(["csam"])
    ref = StrictCharField(max_length=255, required=False)


class TextSubmitView(APIView):
    throttle_scope = "worker"
    permission_classes = [HasApiKey]

    class Input(PromptCounts, InputSerializer):
        id = serializers.UUIDField(help_text="A job id from the pop's `ids`.")
        generation = GenerationField(max_length=1_000_000, required=False, default="")
        state = serializers.ChoiceField(["ok", "censored", "faulted", "csam"], default="ok")
        seed = StrictIntegerField(required=False, allow_null=True, **BIGINT_RANGE)
        token_count = StrictIntegerField(
            min_value=0,
            max_value=INT_MAX,
            required=False,
            help_text="This cluster's extension: the backend's count of generated tokens, "
            "paid when plausible.",
        )
        gen_metadata = BoundedListField(
            child=GenMetadataInput(),
            required=False,
            allow_null=True,
            max_length=4 * MAX_GEN_METADATA,  # refused unread; past MAX_GEN_METADATA: the 400 below
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
            # A faulted submit's text is a placeholder for the AI Horde's workers ("faulted"):
            # not a text so far to continue from (the original API's submit keeps it).
            text="" if data["state"] == "faulted" else data["generation"],
            state=data["state"],
            seed=data.get("seed"),
            gen_metadata=[dict(entry) for entry in metadata],
            token_count=data.get("token_count"),
            prompt_tokens=data.get("prompt_tokens"),
            prompt_trimmed=data.get("prompt_trimmed", 0),
        )
        return {"reward": float(reward)}
