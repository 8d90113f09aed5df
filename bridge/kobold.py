"""Client for the local KoboldAI's REST API (KoboldAI United and KoboldCpp answer the same paths).

Only four calls are needed: the model name, the two length limits and generate; KoboldCpp adds
its true context length, its token counts and whether it is busy (`/api/extra/*`). Every
failure becomes one of the exceptions below, each with a one-line message, so the worker loop
can decide between retrying, giving the job back and stopping without knowing anything about
HTTP. The OpenAI-compatible backends (`bridge.openai_backend`) raise the same exceptions.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from bridge.fitting import PromptFit, cut_at_stop, fit_payload
from bridge.net import ThreadSessions, describe_network_error, json_body, sse_events

log = logging.getLogger("bridge")

# Called with the whole text generated so far while a backend streams; returning False stops
# reading the stream (the cluster no longer wants the job).
OnText = Callable[[str], bool]

# KoboldAI United reports this instead of a model name while no model is loaded.
NO_MODEL = "ReadOnly"


class KoboldError(Exception):
    """Base class; the message is one line meant for the contributor."""


class KoboldUnreachable(KoboldError):
    """Nothing answered at the URL, or it stopped answering: worth retrying later."""


class NotKoboldAI(KoboldError):
    """Something answered, but not the KoboldAI API."""


class NoModelLoaded(KoboldError):
    """KoboldAI runs but has no model loaded (yet)."""


class KoboldBusy(KoboldError):
    """503: KoboldAI is generating for someone else; retry shortly."""


class PayloadRefused(KoboldError):
    """422: KoboldAI rejected the job's parameters; retrying the same payload cannot help."""


class GenerationFailed(KoboldError):
    """Any other failed generation (500, 501, 507, a malformed answer)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the backend serves right now."""

    name: str  # as the backend reports it
    max_length: int  # the default cap on new tokens per job
    max_context_length: int
    # The name to advertise when the backend's convention is not KoboldAI's (see
    # `cluster_model_name`), and the most new tokens --max-length may ask for, when that is
    # more than the default (KoboldCpp and OpenAI-compatible servers allow up to the context).
    advertised: str | None = None
    max_length_ceiling: int | None = None
    # False when the backend does not report its context: then --max-context-length and
    # --max-length are taken as given instead of capped by the bridge's cautious defaults.
    limits_known: bool = True

    @property
    def cluster_name(self) -> str:
        """The model name to advertise to the cluster."""
        return self.advertised or cluster_model_name(self.name)


@dataclass(frozen=True)
class Generation:
    """A generated text and, when the backend counted them, its tokens; `prompt` says how
    the prompt was sent (its tokens, and those cut to fit the context), when it was fitted."""

    text: str
    tokens: int | None = None
    prompt: PromptFit | None = None


def whole(value: Any) -> int | None:
    """`value` if it is a whole number >= 0 (JSON's bool is not one), else None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def cluster_model_name(name: str) -> str:
    """KoboldAI reports a Hugging Face model by its folder name, in which the repository's "/"
    became "_" (`KoboldAI_OPT-13B-Erebus` for `KoboldAI/OPT-13B-Erebus`). Like the legacy bridge,
    turn the first "_" back into "/" when the name has no "/", so every bridge advertises the
    same model under the same name. Names that already contain "/" are kept as they are."""
    if "/" in name:
        return name
    return name.replace("_", "/", 1)


class KoboldClient:
    """Talks to one KoboldAI. Safe to share between worker threads (one session per thread).

    With `koboldcpp=True` it also reads KoboldCpp's extras: the true context length (its
    `max_context_length` is only the cap its own horde worker uses, 4096 by default), whether
    it is busy, and the completion tokens newer versions report with each result."""

    def __init__(
        self,
        url: str,
        *,
        koboldcpp: bool = False,
        version: str | None = None,
        apikey: str | None = None,
        generate_timeout: float = 300.0,
        connect_timeout: float = 5.0,
        info_timeout: float = 10.0,
    ) -> None:
        self.koboldcpp = koboldcpp
        self.label = "KoboldCpp" if koboldcpp else "KoboldAI"
        self.version = version
        # KoboldCpp streams (POST /api/extra/generate/stream); KoboldAI United does not.
        self.streams = koboldcpp
        self.parallel: int | None = None  # requests served at once: not reported
        self.context: int | None = None  # the true context, once model_info read it
        self._counts = koboldcpp  # whether /api/extra/tokencount may answer
        self.url = url.rstrip("/")
        # People paste the API's address as KoboldCpp prints it ("…/api"); the paths below
        # already start with /api, so keep only the server's address.
        for suffix in ("/api/latest", "/api/v1", "/api"):
            self.url = self.url.removesuffix(suffix)
        self.generate_timeout = generate_timeout
        self.connect_timeout = connect_timeout
        self.info_timeout = info_timeout
        # KoboldCpp started with --password wants it as a Bearer token.
        self._sessions = ThreadSessions({"Authorization": f"Bearer {apikey}"} if apikey else None)

    @property
    def _session(self) -> requests.Session:
        return self._sessions.get()

    def model_info(self) -> ModelInfo:
        """Read the loaded model and its limits."""
        name = self._get("/api/latest/model", "result")
        if not isinstance(name, str) or not name:
            raise self._not_kobold("/api/latest/model", "without a model name")
        if name == NO_MODEL:
            raise NoModelLoaded(f"KoboldAI at {self.url} has no model loaded; load one first")
        lengths = []
        for path in ("/api/latest/config/max_length", "/api/latest/config/max_context_length"):
            value = self._get(path, "value")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise self._not_kobold(path, "without a positive whole number")
            lengths.append(value)
        if not self.koboldcpp:
            self.context = lengths[1]
            return ModelInfo(name=name, max_length=lengths[0], max_context_length=lengths[1])
        try:
            context = whole(self._get("/api/extra/true_max_context_length", "value"))
        except NotKoboldAI:
            context = None  # a KoboldCpp older than that endpoint
        context = self.context = context or lengths[1]
        # KoboldCpp names its model "koboldcpp/<file>": the AI Horde's name for a GGUF model.
        return ModelInfo(
            name=name,
            max_length=min(lengths[0], context),
            max_context_length=context,
            advertised=name if name.startswith("koboldcpp/") else f"koboldcpp/{name}",
            max_length_ceiling=context,
        )

    def busy(self, ours: int) -> str | None:
        """Why the owner is using KoboldCpp right now (None: it is free for a job). `ours`
        is the number of this bridge's own jobs in progress, which keep it busy too."""
        if not self.koboldcpp:
            return None
        try:
            response = self._session.get(
                f"{self.url}/api/extra/perf", timeout=(self.connect_timeout, self.info_timeout)
            )
        except requests.RequestException as error:
            raise self._unreachable(error) from None
        data = json_body(response)
        if response.status_code != 200 or not isinstance(data, dict):
            return None  # an old KoboldCpp without /api/extra/perf: nothing to go by
        queue = whole(data.get("queue")) or 0
        if queue > 0:
            return f"{queue} request{'s' if queue > 1 else ''} waiting in KoboldCpp"
        if data.get("idle") == 0 and ours == 0:
            return "KoboldCpp is generating for someone else"
        return None

    def generate(
        self, payload: dict[str, Any], timeout: float | None = None, on_text: OnText | None = None
    ) -> Generation:
        """Generate one text for a job's payload and return it, waiting up to `timeout`
        seconds for KoboldAI, but never less than `generate_timeout`. With `on_text`, a
        KoboldCpp streams and `on_text` gets the text so far as it grows."""
        payload, fit = fit_payload(payload, self.context, self.count_tokens)
        # quiet: KoboldAI would otherwise print every prompt and result to its own console.
        body = {**payload, "quiet": True}
        if self.koboldcpp:  # its name for this generation, to abort it (`_abort`)
            body["genkey"] = f"KCLUSTER_{uuid.uuid4().hex[:16]}"
        read = max(self.generate_timeout, timeout or 0.0)
        stops = payload.get("stop_sequence")
        if on_text is not None and self.streams:
            # KoboldCpp streams the rest of the token a stop sequence ended in: not sent on.
            streamed = self._generate_streamed(
                body, read, lambda text: on_text(cut_at_stop(text, stops))
            )
            if streamed is not None:
                text = cut_at_stop(streamed.text, stops)
                return Generation(text, self._last_token_count(), fit)
        try:
            response = self._session.post(
                f"{self.url}/api/latest/generate",
                json=body,
                timeout=(self.connect_timeout, read),
            )
        except requests.RequestException as error:
            raise self._unreachable(error) from None
        self._raise_for_generate(response)
        data = json_body(response)
        try:
            result = data["results"][0]
            text = result["text"]
        except (TypeError, KeyError, IndexError):
            result, text = {}, None
        if not isinstance(text, str):
            raise GenerationFailed(f"{self.label}'s answer to generate has no results[0].text")
        # Newer KoboldCpp versions report the tokens they generated; KoboldAI United does not.
        tokens = whole(result.get("completion_tokens"))
        if tokens is None:
            tokens = self._last_token_count()
        return Generation(cut_at_stop(text, stops), tokens, fit)

    def _last_token_count(self) -> int | None:
        """KoboldCpp's count of the tokens of the generation that just ended, from
        `/api/extra/perf` (1.76 reports none with its results, and its stream never does).
        KoboldCpp generates one text at a time, so the last one is ours unless another
        ended in the moment since, which is not worth a second request to rule out."""
        if not self.koboldcpp:
            return None
        try:
            response = self._session.get(
                f"{self.url}/api/extra/perf", timeout=(self.connect_timeout, self.info_timeout)
            )
        except requests.RequestException:
            return None  # the text is what matters; the cluster counts it instead
        data = json_body(response)
        if response.status_code != 200 or not isinstance(data, dict):
            return None
        return whole(data.get("last_token_count"))

    def _abort(self, genkey: str) -> None:
        """Stop KoboldCpp's generation `genkey`: it goes on after its stream's reader left."""
        try:
            self._session.post(
                f"{self.url}/api/extra/abort",
                json={"genkey": genkey},
                timeout=(self.connect_timeout, self.info_timeout),
            )
        except requests.RequestException as error:
            log.debug("could not abort KoboldCpp's generation: %s", describe_network_error(error))

    def count_tokens(self, text: str) -> int | None:
        """KoboldCpp's count of `text` in its model's tokens; None from KoboldAI United (no
        such endpoint; it fits the prompt itself) or when it cannot answer now."""
        if not self._counts:
            return None
        try:
            response = self._session.post(
                f"{self.url}/api/extra/tokencount",
                json={"prompt": text},
                timeout=(self.connect_timeout, self.info_timeout),
            )
        except requests.RequestException as error:
            raise self._unreachable(error) from None
        data = json_body(response)
        if response.status_code in (404, 405, 501):
            self._counts = False
        if response.status_code != 200 or not isinstance(data, dict):
            return None
        return whole(data.get("value"))

    def _generate_streamed(
        self, body: dict[str, Any], read: float, on_text: OnText
    ) -> Generation | None:
        """KoboldCpp's SSE stream (`event: message`, `data: {"token": ...}`); None when this
        KoboldCpp has no stream endpoint (then it is not asked again)."""
        try:
            with self._session.post(
                f"{self.url}/api/extra/generate/stream",
                json=body,
                timeout=(self.connect_timeout, read),
                stream=True,
            ) as response:
                if response.status_code in (404, 405, 501):
                    self.streams = False
                    return None
                self._raise_for_generate(response)
                text = ""
                for event, data in sse_events(response):
                    token = _json(data).get("token") if event == "message" else None
                    if isinstance(token, str) and token:
                        text += token
                        if not on_text(text):
                            self._abort(body["genkey"])
                            break
                return Generation(text)
        except requests.RequestException as error:
            raise self._unreachable(error) from None

    def _raise_for_generate(self, response: requests.Response) -> None:
        if response.status_code == 503:
            raise KoboldBusy(f"{self.label} is busy (503)")
        if response.status_code == 422:
            raise PayloadRefused(f"{self.label} refused the job's parameters: {_detail(response)}")
        if response.status_code != 200:
            raise GenerationFailed(
                f"{self.label} answered {response.status_code} to generate: {_detail(response)}"
            )

    def _get(self, path: str, key: str) -> Any:
        try:
            response = self._session.get(
                f"{self.url}{path}", timeout=(self.connect_timeout, self.info_timeout)
            )
        except requests.RequestException as error:
            raise self._unreachable(error) from None
        data = json_body(response)
        if response.status_code != 200 or not isinstance(data, dict) or key not in data:
            shape = "" if response.status_code != 200 else " but not with the KoboldAI API's JSON"
            raise self._not_kobold(path, f"{response.status_code}{shape}")
        return data[key]

    def _unreachable(self, error: requests.RequestException) -> KoboldUnreachable:
        return KoboldUnreachable(
            f"cannot reach KoboldAI ({describe_network_error(error)}): "
            f"is KoboldAI running at {self.url}?"
        )

    def _not_kobold(self, path: str, what: str) -> NotKoboldAI:
        return NotKoboldAI(
            f"the server at {self.url} is not KoboldAI (GET {path} answered {what}); "
            "check --backend-url"
        )


def _json(data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _detail(response: requests.Response) -> str:
    """A short summary of an error body: KoboldAI puts the reason in `detail`."""
    data = json_body(response)
    detail = data.get("detail", data) if isinstance(data, dict) else response.text
    if isinstance(detail, dict):
        # 422 bodies map each field to its messages: {"temperature": ["Must be greater than 0"]}
        parts = []
        for field, messages in detail.items():
            text = "; ".join(map(str, messages)) if isinstance(messages, list) else str(messages)
            parts.append(f"{field}: {text}")
        detail = ", ".join(parts)
    summary = " ".join(str(detail).split())
    return summary[:200] or "no details"
