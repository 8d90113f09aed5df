"""OpenAI's wire format for the OpenAI-compatible API: its errors, its refusals, its answers.

Kept apart from the views so that they only parse, call one service and shape the answer.
"""

from __future__ import annotations

import time
from typing import Any

from rest_framework.response import Response

from generations.chat import estimate_tokens
from generations.models import Job
from generations.status import PromptStatus
from generations.stops import cut_at_stop
from koboldcluster.errors import BadRequest, exception_handler

# OpenAI's error `type` per status (what its SDKs and clients branch on).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}
ERROR_CODES = {
    "InvalidAPIKey": "invalid_api_key",
    "ValidationError": "invalid_value",
    "ModelNotFound": "model_not_found",
}
# The request field an error is about, by its code, where the error does not say.
ERROR_PARAMS = {"ModelNotFound": "model"}
# The KoboldAI names a validation error may carry, in the request's own words.
PARAM_NAMES = {
    "max_length": "max_tokens",
    "max_context_length": "truncation_length",
    "stop_sequence": "stop",
}


class Unsupported(BadRequest):
    """A field this cluster cannot honour where ignoring it would change the answer."""

    default_rc = "unsupported_parameter"

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


def openai_error(message: str, status: int, *, code: str, param: str | None = None) -> dict:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def openai_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """The cluster's errors in OpenAI's shape `{"error": {message, type, param, code}}`."""
    response = exception_handler(exc, context)
    if response is None or not isinstance(response.data, dict):
        return response
    data = response.data
    param = getattr(exc, "param", None)
    if param is None and data.get("errors"):
        param = next(iter(data["errors"]))
        param = PARAM_NAMES.get(param, param)
    rc = data.get("rc", "error")
    param = param or ERROR_PARAMS.get(rc)
    response.data = openai_error(
        data.get("message", ""), response.status_code, code=ERROR_CODES.get(rc, rc), param=param
    )
    return response


def refuse_unsupported(data: dict[str, Any], fields: dict[str, str]) -> None:
    """Refuse each field of `fields` (name → why) that the request sets to something that
    matters: not absent, null, false, 0, "" or empty."""
    for name, why in fields.items():
        if data.get(name) not in (None, False, 0, "", [], {}):
            raise Unsupported(f"'{name}' is not supported by this cluster: {why}", param=name)


def finish_reason(job: Job, stopped: bool, max_tokens: int) -> str:
    return "length" if not stopped and job.whole_tokens >= max_tokens else "stop"


def usage(prompt: str, status: PromptStatus) -> dict[str, int]:
    """The prompt as the serving backend counted it (after cutting what did not fit its
    context), where its bridge reported that, else by the cluster's token rule (a quarter of
    its characters); the completions by the tokens the ledger charged for them."""
    counted = [job.prompt_tokens for job in status.generations if job.prompt_tokens is not None]
    prompt_tokens = counted[0] if counted else estimate_tokens(prompt)
    completion_tokens = status.tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_body(
    *, status: PromptStatus, prompt: str, stops: list[str], max_tokens: int, chat: bool
) -> dict[str, Any]:
    choices = []
    for index, job in enumerate(status.generations):
        text, stopped = cut_at_stop(job.text, stops)
        choice: dict[str, Any] = {"index": index, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text.strip()}
        else:
            choice["text"] = text
        choice["finish_reason"] = finish_reason(job, stopped, max_tokens)
        choices.append(choice)
    served = status.generations[0].model if status.generations else ""
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{status.prompt.id.hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": served,
        "choices": choices,
        "usage": usage(prompt, status),
    }
