"""Server-sent events to clients: OpenAI's chunks and KoboldCpp's tokens (issue 12).

Each stream is an async iterator of bytes for Django's `StreamingHttpResponse`: under ASGI it
holds no thread while it waits, and a client that disconnects cancels the task, which
cancels the prompt (generations/streaming.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from django.http import StreamingHttpResponse

from generations.api.openai.shapes import finish_reason, openai_error, usage
from generations.status import PromptStatus
from generations.stops import cut_at_stop
from generations.streaming import Deltas, follow
from koboldcluster.errors import ApiError

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# An SSE comment: clients ignore it; it keeps proxies from closing a quiet stream.
KEEPALIVE_COMMENT = b": keep-alive\n\n"


def event_stream(events: AsyncIterator[bytes], headers: dict[str, str] | None = None):
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    for name, value in {**HEADERS, **(headers or {})}.items():
        response[name] = value
    return response


def _data(body: Any) -> bytes:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


async def openai_chunks(
    *,
    prompt_id: Any,
    prompt: str,
    model: str,
    stops: list[str],
    max_tokens: int,
    chat: bool,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """OpenAI's streamed completion: chunks of new text, the finish, usage, `[DONE]`."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    head = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{prompt_id.hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }

    def chunk(piece: str | None, finish: str | None = None, **extra: Any) -> bytes:
        choice: dict[str, Any] = {"index": 0}
        if chat:
            choice["delta"] = {} if piece is None else {"content": piece}
        else:
            choice["text"] = piece or ""
        choice.update(logprobs=None, finish_reason=finish)
        body = {**head, "choices": [choice], **extra}
        if include_usage:
            body["usage"] = None
        return _data(body)

    deltas = Deltas(stops=stops, strip=chat)
    if chat:
        yield _data({**head, "choices": [_role_choice()]})
    try:
        # aclosing: a stream that fails here (ServerReplaced) cancels its prompt at once.
        async with aclosing(follow(prompt_id)) as updates:
            async for update in updates:
                if update.keepalive:
                    yield KEEPALIVE_COMMENT
                    continue
                piece = deltas.delta(update.text, final=update.status is not None)
                if update.status is None:
                    if piece:
                        yield chunk(piece)
                    continue
                status = update.status
                if status.generations:
                    head["model"] = status.generations[0].model
                finish = _openai_finish(status, stops, max_tokens)
                if piece:
                    yield chunk(piece)
                yield chunk(None, finish)
                if include_usage:
                    yield _data({**head, "choices": [], "usage": usage(prompt, status)})
    except ApiError as error:
        code = error.rc or "error"
        yield _data(openai_error(error.message, error.status_code, code=code))
    yield b"data: [DONE]\n\n"


def _openai_finish(status: PromptStatus, stops: list[str], max_tokens: int) -> str:
    if not status.generations:
        return "stop"
    _, stopped = cut_at_stop(status.generations[0].text, stops)
    return finish_reason(status.generations[0], stopped, max_tokens)


def _role_choice() -> dict[str, Any]:
    return {
        "index": 0,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    }


async def kobold_tokens(*, prompt_id: Any) -> AsyncIterator[bytes]:
    """KoboldCpp's stream: `event: message` with `data: {"token": ...}` per new piece."""
    deltas = Deltas()
    try:
        async with aclosing(follow(prompt_id)) as updates:
            async for update in updates:
                if update.keepalive:
                    yield KEEPALIVE_COMMENT
                    continue
                piece = deltas.delta(update.text, final=update.status is not None)
                if piece:
                    yield _kobold_event({"token": piece})
                if update.status is not None:
                    finish = _kobold_finish(update.status)
                    yield _kobold_event({"token": "", "finish_reason": finish})
    except ApiError as error:
        yield _kobold_event({"token": "", "finish_reason": "error", "error": error.message})


def _kobold_finish(status: PromptStatus) -> str:
    """ "length" when the generation used all of max_length, else "stop" (as KoboldCpp)."""
    jobs = status.generations
    return "length" if jobs and jobs[0].whole_tokens >= status.prompt.max_length else "stop"


def _kobold_event(body: dict[str, Any]) -> bytes:
    return b"event: message\n" + _data(body)
