"""Client for OpenAI-compatible local servers: llama.cpp server, Ollama, vLLM, TabbyAPI,
text-generation-webui and any other server with `/v1/models` and `/v1/completions`.

Generation always goes to `/v1/completions` with the prompt as raw text (`bridge.translate`
builds the body). What differs per server is where its model name and context length are
read, which sampler fields it takes, whether its `usage` counts can be trusted and whether it
can say that it is busy: a `Flavour` each, chosen by `bridge.detect`. Failures raise the
exceptions of `bridge.kobold`, so the worker loop treats every backend alike.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any

import requests

from bridge.fitting import PromptFit, cut_at_stop, fit_payload
from bridge.flavours import Flavour, gguf_name
from bridge.kobold import (
    Generation,
    GenerationFailed,
    KoboldBusy,
    KoboldUnreachable,
    ModelInfo,
    NoModelLoaded,
    NotKoboldAI,
    OnText,
    PayloadRefused,
    whole,
)
from bridge.net import ThreadSessions, describe_network_error, json_body, sse_events
from bridge.translate import DIALECTS, translate

log = logging.getLogger("bridge")

# When a server does not say: the AI Horde's defaults for a worker (research §2.3).
DEFAULT_CONTEXT = 2048
DEFAULT_MAX_LENGTH = 512
# Ollama's context when the model's Modelfile sets no num_ctx (its OpenAI endpoints cannot
# change it per request).
OLLAMA_DEFAULT_CONTEXT = 2048


class OpenAIClient:
    """Talks to one OpenAI-compatible server. Safe to share between worker threads."""

    def __init__(
        self,
        url: str,
        flavour: Flavour,
        *,
        apikey: str | None = None,
        version: str | None = None,
        generate_timeout: float = 300.0,
        connect_timeout: float = 5.0,
        info_timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/").removesuffix("/v1")
        self.flavour = flavour
        self.label = flavour.label
        self.version = version
        self.streams = True  # every OpenAI-compatible server takes `stream: true`
        self.dialect = DIALECTS.get(flavour.kind, DIALECTS["openai"])
        self.generate_timeout = generate_timeout
        self.connect_timeout = connect_timeout
        self.info_timeout = info_timeout
        headers = {"Authorization": f"Bearer {apikey}"} if apikey else None
        self._sessions = ThreadSessions(headers)
        self._model: str | None = None  # the id to send in each completion
        self._dropped: set[str] = set()
        self._dropped_lock = threading.Lock()
        self._slots_unknown = False
        self.parallel: int | None = None  # llama.cpp's slots (--parallel), when it says
        self.context: int | None = None  # the context the server reported, if it did
        self._tokenizer = flavour.tokenizer

    @property
    def _session(self) -> requests.Session:
        return self._sessions.get()

    def model_info(self) -> ModelInfo:
        """The served model, its advertised name and the limits the server reports."""
        models = self._get("/v1/models")
        data = models.get("data") if isinstance(models, dict) else None
        if not isinstance(data, list):
            raise self._not_openai("/v1/models", "without a model list")
        ids = [entry["id"] for entry in data if isinstance(entry, dict) and entry.get("id")]
        reader = getattr(self, f"_info_{self.flavour.kind}", None)
        name, context = reader(data, ids) if reader else (ids[0] if ids else None, None)
        if not name:
            raise NoModelLoaded(f"{self.label} at {self.url} serves no model; load one first")
        self._model = name
        known = context is not None
        self.context = context
        context = context or DEFAULT_CONTEXT
        return ModelInfo(
            name=name,
            max_length=min(DEFAULT_MAX_LENGTH, context),
            max_context_length=context,
            advertised=gguf_name(name) or name,
            max_length_ceiling=context,
            limits_known=known,
        )

    def _info_llamacpp(self, data: list, ids: list[str]) -> tuple[str | None, int | None]:
        props = self._get("/props", required=False)
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        context = whole(settings.get("n_ctx")) if isinstance(settings, dict) else None
        if isinstance(props, dict):
            context = context or whole(props.get("n_ctx"))
            self.parallel = whole(props.get("total_slots")) or None
        return (ids[0] if ids else None), context or None

    def _info_vllm(self, data: list, ids: list[str]) -> tuple[str | None, int | None]:
        first = data[0] if data and isinstance(data[0], dict) else {}
        return first.get("id"), whole(first.get("max_model_len")) or None

    def _info_tabbyapi(self, data: list, ids: list[str]) -> tuple[str | None, int | None]:
        card = self._get("/v1/model", required=False)
        if not isinstance(card, dict) or not card.get("id"):
            return (ids[0] if ids else None), None
        parameters = card.get("parameters")
        context = whole(parameters.get("max_seq_len")) if isinstance(parameters, dict) else None
        return card["id"], context or None

    def _info_ollama(self, data: list, ids: list[str]) -> tuple[str | None, int | None]:
        # Ollama loads models on demand: prefer one already in memory, else the first.
        running = self._get("/api/ps", required=False)
        loaded = running.get("models") if isinstance(running, dict) else None
        names = [m.get("name") for m in loaded or [] if isinstance(m, dict) and m.get("name")]
        name = names[0] if names else (ids[0] if ids else None)
        if name is None:
            return None, None
        # "name" is what Ollama versions before "model" read; both name the same model.
        shown = self._post_json("/api/show", {"model": name, "name": name})
        context = OLLAMA_DEFAULT_CONTEXT
        if isinstance(shown, dict):
            match = re.search(r"^num_ctx\s+(\d+)", str(shown.get("parameters") or ""), re.M)
            context = int(match.group(1)) if match else context
            info = shown.get("model_info")
            trained = [
                value
                for key, value in (info.items() if isinstance(info, dict) else [])
                if key.endswith(".context_length") and whole(value)
            ]
            context = min([context, *trained])
        return name, context

    def _info_textgen(self, data: list, ids: list[str]) -> tuple[str | None, int | None]:
        info = self._get("/v1/internal/model/info", required=False)
        name = info.get("model_name") if isinstance(info, dict) else None
        if name in (None, "", "None"):
            return None, None
        return name, None

    def busy(self, ours: int) -> str | None:
        """Why the server cannot take a job now (None: it can). llama.cpp's `/slots` (started
        with `--slots` in newer versions) tells whether a slot is free; others cannot tell."""
        if self.flavour.kind != "llamacpp" or self._slots_unknown:
            return None
        try:
            response = self._session.get(
                f"{self.url}/slots", timeout=(self.connect_timeout, self.info_timeout)
            )
        except requests.RequestException as error:
            raise self._unreachable(error) from None
        slots = json_body(response)
        if response.status_code != 200 or not isinstance(slots, list):
            self._slots_unknown = True
            log.info(
                "llama.cpp server: /slots answered %d; start it with --slots so that the "
                "bridge takes jobs only while a slot is free",
                response.status_code,
            )
            return None
        busy = sum(1 for slot in slots if isinstance(slot, dict) and _processing(slot))
        if slots and busy >= len(slots):
            return f"no free slot in the llama.cpp server ({busy} of {len(slots)} busy)"
        return None

    def generate(
        self, payload: dict[str, Any], timeout: float | None = None, on_text: OnText | None = None
    ) -> Generation:
        """Generate one text for a job's payload, waiting at least `generate_timeout`. With
        `on_text`, the completion streams and `on_text` gets the text so far as it grows."""
        payload, fit = fit_payload(payload, self.context, self.count_tokens)
        body = self.completion_body(payload)
        stops = body.get("stop")
        if on_text is not None:
            answer = self._generate_streamed(
                body, timeout, lambda text: on_text(cut_at_stop(text, stops))
            )
        else:
            answer = self._generate_once(body, timeout)
        text, tokens, stopped_on, prompt_tokens = answer
        if not self.flavour.trusts_usage:
            tokens = prompt_tokens = None
        if fit is not None and prompt_tokens:  # what it read, by its own account
            fit = PromptFit(prompt_tokens, fit.trimmed)
        return Generation(cut_at_stop(text, stops, stopped_on), tokens, fit)

    def _generate_once(self, body: dict[str, Any], timeout: float | None) -> _Answer:
        try:
            response = self._session.post(
                f"{self.url}/v1/completions",
                json=body,
                timeout=(self.connect_timeout, max(self.generate_timeout, timeout or 0.0)),
            )
        except requests.RequestException as error:
            raise self._unreachable(error) from None
        self._raise_for_generate(response)
        data = json_body(response)
        try:
            choice = data["choices"][0]
            text = choice["text"]
        except (TypeError, KeyError, IndexError):
            choice, text = {}, None
        if not isinstance(text, str):
            raise GenerationFailed(f"{self.label}'s completion has no choices[0].text")
        tokens, prompt_tokens = _usage(data.get("usage"))
        return text, tokens, _stopped_on(data, choice), prompt_tokens

    def _generate_streamed(
        self, body: dict[str, Any], timeout: float | None, on_text: OnText
    ) -> _Answer:
        """`stream: true`: chunks of `choices[0].text` until `data: [DONE]`."""
        text, tokens, stopped_on, prompt_tokens = "", None, None, None
        try:
            with self._session.post(
                f"{self.url}/v1/completions",
                json={**body, "stream": True, **self._stream_options()},
                timeout=(self.connect_timeout, max(self.generate_timeout, timeout or 0.0)),
                stream=True,
            ) as response:
                self._raise_for_generate(response)
                for _, data in sse_events(response):
                    if data.strip() == "[DONE]":
                        break
                    chunk = _chunk(data)
                    if isinstance(chunk.get("usage"), dict):  # some servers end with one
                        tokens, prompt_tokens = _usage(chunk["usage"])
                    choices = chunk.get("choices")
                    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
                    stopped_on = _stopped_on(chunk, choice) or stopped_on
                    piece = choice.get("text")
                    if isinstance(piece, str) and piece:
                        text += piece
                        if not on_text(text):
                            break
        except requests.RequestException as error:
            raise self._unreachable(error) from None
        return text, tokens, stopped_on, prompt_tokens

    def count_tokens(self, text: str) -> int | None:
        """The server's count of `text` in its model's tokens, from its tokenizer endpoint;
        None when it has none (then it fits the prompt itself) or cannot answer now."""
        if self._tokenizer is None:
            return None
        path, field, key = self._tokenizer
        body: dict[str, Any] = {field: text}
        if self.flavour.kind == "llamacpp":
            body["add_special"] = True
        if self.flavour.kind == "vllm":
            body["model"] = self._model or ""
        data = self._post_json(path, body, missing=True)
        if data is _MISSING:
            self._tokenizer = None  # not this version: estimate from now on
            return None
        value = data.get(key) if isinstance(data, dict) else None
        return len(value) if isinstance(value, list) else whole(value)

    def _stream_options(self) -> dict[str, Any]:
        if not self.dialect.stream_usage:
            return {}
        return {"stream_options": {"include_usage": True}}

    def completion_body(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The `/v1/completions` body; logs each parameter this server cannot honour once."""
        body, dropped = translate(payload, self.dialect)
        with self._dropped_lock:
            new = [name for name in dropped if name not in self._dropped]
            self._dropped.update(new)
        if new:
            log.info(
                "%s has no equivalent for %s; dropped from jobs (said once)",
                self.label,
                ", ".join(new),
            )
        extra = {"verbose": True} if self.flavour.kind == "llamacpp" else {}
        return {"model": self._model or "", **body, **extra}

    def _raise_for_generate(self, response: requests.Response) -> None:
        status = response.status_code
        if status == 200:
            return
        detail = _detail(response)
        if status in (429, 503):
            raise KoboldBusy(f"{self.label} is busy ({status})")
        if status in (400, 422):
            raise PayloadRefused(f"{self.label} refused the job's parameters: {detail}")
        raise GenerationFailed(f"{self.label} answered {status} to a completion: {detail}")

    def _get(self, path: str, *, required: bool = True) -> Any:
        try:
            response = self._session.get(
                f"{self.url}{path}", timeout=(self.connect_timeout, self.info_timeout)
            )
        except requests.RequestException as error:
            raise self._unreachable(error) from None
        data = json_body(response)
        if response.status_code == 200 and data is not None:
            return data
        if required:
            raise self._not_openai(path, str(response.status_code))
        return None

    def _post_json(self, path: str, body: dict[str, Any], *, missing: bool = False) -> Any:
        """The JSON answer of a 200, else None (`_MISSING` for 404 and 405 with `missing`)."""
        try:
            response = self._session.post(
                f"{self.url}{path}", json=body, timeout=(self.connect_timeout, self.info_timeout)
            )
        except requests.RequestException as error:
            raise self._unreachable(error) from None
        if missing and response.status_code in (404, 405):
            return _MISSING
        return json_body(response) if response.status_code == 200 else None

    def _unreachable(self, error: requests.RequestException) -> KoboldUnreachable:
        return KoboldUnreachable(
            f"cannot reach the {self.label} ({describe_network_error(error)}): "
            f"is it running at {self.url}?"
        )

    def _not_openai(self, path: str, what: str) -> NotKoboldAI:
        return NotKoboldAI(
            f"the server at {self.url} is no longer an OpenAI-compatible server (GET {path} "
            f"answered {what}); check --backend-url"
        )


# text, completion tokens, the stop string the server removed, prompt tokens.
_Answer = tuple[str, int | None, str | None, int | None]
_MISSING = object()


def _usage(usage: Any) -> tuple[int | None, int | None]:
    """Completion and prompt tokens of an OpenAI `usage` object."""
    if not isinstance(usage, dict):
        return None, None
    return whole(usage.get("completion_tokens")), whole(usage.get("prompt_tokens"))


def _stopped_on(data: dict[str, Any], choice: Any) -> str | None:
    """The stop string a server stopped on and left out of the text: vLLM says it in the
    choice's `stop_reason`; llama.cpp in `__verbose.stopping_word` when asked (`verbose`)."""
    reason = choice.get("stop_reason") if isinstance(choice, dict) else None
    if isinstance(reason, str) and reason:
        return reason
    verbose = data.get("__verbose")
    word = verbose.get("stopping_word") if isinstance(verbose, dict) else None
    return word if isinstance(word, str) and word else None


def _chunk(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _processing(slot: dict[str, Any]) -> bool:
    # Newer llama.cpp says is_processing; older versions a state (0 idle, 1 processing).
    if "is_processing" in slot:
        return bool(slot["is_processing"])
    return slot.get("state", 0) != 0


def _detail(response: requests.Response) -> str:
    """The error message of an OpenAI-style (`error.message`) or FastAPI (`detail`) body."""
    data = json_body(response)
    detail: Any = response.text
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict):
            detail = error.get("message", error)
        elif isinstance(error, str):
            detail = error
        elif "detail" in data:
            detail = data["detail"]
        elif "message" in data:
            detail = data["message"]
    summary = " ".join(str(detail).split())
    return summary[:200] or "no details"
