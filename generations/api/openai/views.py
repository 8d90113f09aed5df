"""The OpenAI-compatible API under /v1/: models, completions, chat completions.

For the `openai` SDKs, LangChain, KoboldAI Lite's and SillyTavern's OpenAI connections and
the like. A completion is an ordinary prompt of the queue that the request waits for
(generations/frontend.py); `model` chooses which servers may serve it (an exact name or a
family, generations/chat.py; "*" or none: any). Fields the cluster cannot honour are
ignored when that changes nothing the client relies on, and refused (400) when it would.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from adrf.views import APIView as AsyncAPIView
from asgiref.sync import sync_to_async
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.authentication import BearerApiKeyAuthentication, api_user
from accounts.identity import anonymous_user
from accounts.models import User
from generations import chat
from generations.api.openai.inputs import ChatInput, CompletionsInput, generation_request
from generations.api.openai.shapes import (
    Unsupported,
    completion_body,
    openai_error,
    openai_exception_handler,
    refuse_unsupported,
)
from generations.api.sse import event_stream, openai_chunks
from generations.fitting import LIMITS_HEADER
from generations.frontend import (
    ServedModel,
    generate,
    outlook_headers,
    served_models,
    servers_header,
)
from generations.idempotency import IDEMPOTENCY_KEY_HEADER
from generations.streaming import start
from generations.trusted_only import TRUSTED_ONLY_HEADER
from koboldcluster.api import validated
from koboldcluster.openapi import shape

ExceptionHandler = Callable[[Exception, dict[str, Any]], Response | None]
OPENAI = ["OpenAI-compatible API"]
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's own default for /v1/completions
CHAT_DEFAULT_MAX_TOKENS = 512  # or less, if no server that may serve it generates so much
WARNING_HEADER = "X-KoboldCluster-Warning"

REFUSED = {
    "logprobs": "servers report no token probabilities.",
    "tools": "servers run plain text generation, without tool calls.",
    "functions": "servers run plain text generation, without function calls.",
    "logit_bias": "servers take no token biases.",
    "suffix": "servers do not fill in the middle.",
    "echo": "the prompt is not echoed.",
    "grammar": "servers take no grammar.",
    "grammar_string": "servers take no grammar.",
}
BEARER_DOC = "`Authorization: Bearer <api key>`; without one (or `Bearer undefined`): anonymous."
OPENAI_ERROR = shape(
    "OpenAIError",
    {
        "error": shape(
            "OpenAIErrorDetail",
            {
                "message": serializers.CharField(),
                "type": serializers.CharField(),
                "param": serializers.CharField(allow_null=True),
                "code": serializers.CharField(),
            },
        )
    },
)


class OpenAIView(APIView):
    authentication_classes = [BearerApiKeyAuthentication]
    throttle_scope = "info"
    error_schema = OPENAI_ERROR  # the errors every operation may answer, in OpenAI's shape

    def get_exception_handler(self) -> ExceptionHandler:
        return openai_exception_handler


class ModelsView(OpenAIView):
    @extend_schema(
        operation_id="openai_models",
        tags=OPENAI,
        summary="The models active servers serve now",
        description="`context_length` and `max_tokens` are the most any of its servers allows.",
        responses={200: shape("OpenAIModels", {"object": serializers.CharField(), "data": {}})},
    )
    def get(self, request: Request) -> Response:
        return Response({"object": "list", "data": [_model_body(m) for m in served_models()]})


def _model_body(model: ServedModel) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.since.timestamp()),
        "owned_by": "koboldcluster",
        "context_length": model.max_context_length,
        "max_tokens": model.max_length,
        "servers": model.servers,
    }


async def _user(request: Request) -> User:
    return api_user(request) or await sync_to_async(anonymous_user)()


COMPLETION_RESPONSES = {
    200: shape("OpenAICompletion", {"id": serializers.CharField(), "choices": {}, "usage": {}}),
    400: OPENAI_ERROR,
    401: OPENAI_ERROR,
    404: OPENAI_ERROR,
    429: OPENAI_ERROR,
    502: OPENAI_ERROR,
    503: OPENAI_ERROR,
    504: OPENAI_ERROR,
}


class AsyncOpenAIView(AsyncAPIView):
    authentication_classes = [BearerApiKeyAuthentication]
    error_schema = OPENAI_ERROR
    throttle_scope = "submit"

    def get_exception_handler(self) -> ExceptionHandler:
        return openai_exception_handler


class CompletionsView(AsyncOpenAIView):
    @extend_schema(
        operation_id="openai_completions",
        tags=OPENAI,
        summary="Complete a prompt, waiting for it",
        description="`model`, `prompt`, `max_tokens` (16), `temperature`, `top_p`, `n`, "
        "`stop`, and KoboldAI's samplers by their names; `seed`, penalties and `user` are "
        "ignored; `logprobs`, `echo`, `suffix`, `logit_bias` are refused. `stream: true` "
        "answers server-sent events in OpenAI's chunk format as the server generates "
        "(n = 1; `stream_options.include_usage` adds a last chunk with `usage`). "
        "`usage` is estimated by the cluster's token rule. " + BEARER_DOC,
        parameters=[IDEMPOTENCY_KEY_HEADER, TRUSTED_ONLY_HEADER],
        request=CompletionsInput,
        responses=COMPLETION_RESPONSES,
    )
    async def post(self, request: Request) -> Response:
        refuse_unsupported(request.data if isinstance(request.data, dict) else {}, REFUSED)
        data = validated(CompletionsInput, request.data)
        if request.data.get("best_of") not in (None, 1):
            raise Unsupported("'best_of' is not supported by this cluster.", param="best_of")
        user = await _user(request)
        generation, fit = await generation_request(
            request, user, data, data["prompt"], COMPLETIONS_DEFAULT_MAX_TOKENS, data["stop"]
        )
        headers = {LIMITS_HEADER: fit.header()}
        if data["stream"]:
            prompt_id = await start(user=user, request=generation)
            chunks = openai_chunks(
                prompt_id=prompt_id,
                prompt=data["prompt"],
                model=data.get("model") or "",
                stops=data["stop"],
                max_tokens=fit.max_length,
                chat=False,
                include_usage=data["include_usage"],
            )
            headers |= await sync_to_async(outlook_headers)(prompt_id)
            return event_stream(chunks, headers)
        status = await generate(user=user, request=generation)
        headers |= servers_header(status)
        body = completion_body(
            status=status,
            prompt=data["prompt"],
            stops=data["stop"],
            max_tokens=fit.max_length,
            chat=False,
        )
        return Response(body, headers=headers)


class ChatCompletionsView(AsyncOpenAIView):
    @extend_schema(
        operation_id="openai_chat_completions",
        tags=OPENAI,
        summary="Answer a chat, waiting for it",
        description="`messages` (system, developer, user, assistant; text only) become one "
        "prompt through the chat template of `model` (the model catalogue; an unknown model "
        "gets ChatML and the X-KoboldCluster-Warning header; X-Chat-Template names the "
        "template used). Other fields as for /v1/completions; `max_completion_tokens` "
        "too; `tools` and `response_format` other than text are refused. " + BEARER_DOC,
        parameters=[IDEMPOTENCY_KEY_HEADER, TRUSTED_ONLY_HEADER],
        request=ChatInput,
        responses=COMPLETION_RESPONSES,
    )
    async def post(self, request: Request) -> Response:
        _refuse_unsupported_chat(request.data if isinstance(request.data, dict) else {})
        data = validated(ChatInput, request.data)
        user = await _user(request)
        requested = (data.get("model") or "").strip()
        requested = "" if requested in ("*",) else requested
        choice, text = await _chat_prompt(data, requested)
        stops = list(dict.fromkeys([*data["stop"], *choice.template.stop]))
        generation, fit = await generation_request(
            request, user, data, text, CHAT_DEFAULT_MAX_TOKENS, stops
        )
        max_tokens = fit.max_length
        headers = {"X-Chat-Template": choice.template.key, LIMITS_HEADER: fit.header()}
        if choice.warning:
            headers[WARNING_HEADER] = choice.warning
        if data["stream"]:
            prompt_id = await start(user=user, request=generation)
            chunks = openai_chunks(
                prompt_id=prompt_id,
                prompt=text,
                model=requested,
                stops=stops,
                max_tokens=max_tokens,
                chat=True,
                include_usage=data["include_usage"],
            )
            headers |= await sync_to_async(outlook_headers)(prompt_id)
            return event_stream(chunks, headers)
        status = await generate(user=user, request=generation)
        headers |= servers_header(status)
        answer = completion_body(
            status=status, prompt=text, stops=stops, max_tokens=max_tokens, chat=True
        )
        return Response(answer, headers=headers)


def _refuse_unsupported_chat(body: dict[str, Any]) -> None:
    refuse_unsupported(body, REFUSED)
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise Unsupported(
            "'response_format' other than text is not supported by this cluster.",
            param="response_format",
        )


async def _chat_prompt(data: dict[str, Any], requested: str) -> tuple[chat.TemplateChoice, str]:
    """The chat template for the model asked for (among those served), and the chat through it."""
    names = [m.name for m in await sync_to_async(served_models)()]
    choice = await sync_to_async(chat.choose_template)(requested, names)
    messages = [{"role": _role(m["role"]), "content": m["content"]} for m in data["messages"]]
    last = data["messages"][-1]
    text = chat.render(messages, choice.template, continue_last=last["prefix"] or last["partial"])
    return choice, text


def _role(role: str) -> str:
    return "system" if role == "developer" else role


class NotFoundView(OpenAIView):
    """Any other /v1/ path: OpenAI's 404, so its clients show a clear message."""

    @extend_schema(exclude=True)
    def get(self, request: Request, rest: str = "") -> Response:
        message = f"{request.path} is not served by this cluster: see /api/ for what is."
        return Response(openai_error(message, 404, code="unknown_url"), status=404)

    post = get
