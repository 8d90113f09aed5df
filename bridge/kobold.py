"""Client for the local KoboldAI's REST API (KoboldAI United and KoboldCpp answer the same paths).

Only four calls are needed: the model name, the two length limits and generate. Every failure
becomes one of the exceptions below, each with a one-line message, so the worker loop can decide
between retrying, giving the job back and stopping without knowing anything about HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from bridge.net import ThreadSessions, describe_network_error, json_body

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
    """What KoboldAI serves right now."""

    name: str  # as KoboldAI reports it
    max_length: int
    max_context_length: int

    @property
    def cluster_name(self) -> str:
        """The model name to advertise to the cluster; see `cluster_model_name`."""
        return cluster_model_name(self.name)


def cluster_model_name(name: str) -> str:
    """KoboldAI reports a Hugging Face model by its folder name, in which the repository's "/"
    became "_" (`KoboldAI_OPT-13B-Erebus` for `KoboldAI/OPT-13B-Erebus`). Like the legacy bridge,
    turn the first "_" back into "/" when the name has no "/", so every bridge advertises the
    same model under the same name. Names that already contain "/" are kept as they are."""
    if "/" in name:
        return name
    return name.replace("_", "/", 1)


class KoboldClient:
    """Talks to one KoboldAI. Safe to share between worker threads (one session per thread)."""

    def __init__(
        self,
        url: str,
        *,
        generate_timeout: float = 300.0,
        connect_timeout: float = 5.0,
        info_timeout: float = 10.0,
    ) -> None:
        self.url = url.rstrip("/")
        # People paste the API's address as KoboldCpp prints it ("…/api"); the paths below
        # already start with /api, so keep only the server's address.
        for suffix in ("/api/latest", "/api/v1", "/api"):
            self.url = self.url.removesuffix(suffix)
        self.generate_timeout = generate_timeout
        self.connect_timeout = connect_timeout
        self.info_timeout = info_timeout
        self._sessions = ThreadSessions()

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
        return ModelInfo(name=name, max_length=lengths[0], max_context_length=lengths[1])

    def generate(self, payload: dict[str, Any], timeout: float | None = None) -> str:
        """Generate one text for a job's payload and return it, waiting up to `timeout`
        seconds for KoboldAI, but never less than `generate_timeout`."""
        # quiet: KoboldAI would otherwise print every prompt and result to its own console.
        body = {**payload, "quiet": True}
        try:
            response = self._session.post(
                f"{self.url}/api/latest/generate",
                json=body,
                timeout=(self.connect_timeout, max(self.generate_timeout, timeout or 0.0)),
            )
        except requests.RequestException as error:
            raise self._unreachable(error) from None
        if response.status_code == 503:
            raise KoboldBusy("KoboldAI is busy (503)")
        if response.status_code == 422:
            raise PayloadRefused(f"KoboldAI refused the job's parameters: {_detail(response)}")
        if response.status_code != 200:
            raise GenerationFailed(
                f"KoboldAI answered {response.status_code} to generate: {_detail(response)}"
            )
        data = json_body(response)
        try:
            text = data["results"][0]["text"]
        except (TypeError, KeyError, IndexError):
            text = None
        if not isinstance(text, str):
            raise GenerationFailed("KoboldAI's answer to generate has no results[0].text")
        return text

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
            "check --kai-url"
        )


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
