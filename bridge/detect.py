"""Which local LLM server answers at --backend-url, and the client that speaks its API.

One GET after another, each cheap and each answered by exactly one kind of server, so the
first match decides: KoboldCpp (`/api/extra/version`), then any KoboldAI API (`/api/v1/model`:
KoboldAI United), then the OpenAI-compatible servers (`/v1/models`), told apart by what they
add: llama.cpp's `/props`, vLLM's `max_model_len`, TabbyAPI's `/v1/model`, Ollama's
`/api/version`, text-generation-webui's `/v1/internal/model/info`. `--backend kobold|openai`
skips the other family.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import requests

from bridge.flavours import FLAVOURS
from bridge.kobold import KoboldClient, KoboldError, KoboldUnreachable
from bridge.net import ThreadSessions, describe_network_error, json_body
from bridge.openai_backend import OpenAIClient

Backend = KoboldClient | OpenAIClient
Protocol = Literal["kobold", "openai"]
# What people paste: KoboldCpp prints ".../api", OpenAI clients want ".../v1".
URL_SUFFIXES = ("/api/latest", "/api/v1", "/api", "/v1")


class NoBackend(KoboldError):
    """Something answers at the URL, but no API the bridge can use."""


@dataclass(frozen=True)
class Found:
    """The detected server: the client to use and the one line that says what it is."""

    backend: Backend
    description: str


class _Prober:
    def __init__(self, url: str, apikey: str | None, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self.seen: list[str] = []  # "GET /path: 404", for the error message
        headers = {"Authorization": f"Bearer {apikey}"} if apikey else None
        self._session = ThreadSessions(headers).get()

    def get(self, path: str) -> Any:
        """The JSON body of a 200 answer, else None (what was seen is remembered)."""
        try:
            response = self._session.get(f"{self.url}{path}", timeout=self.timeout)
        except requests.RequestException as error:
            raise KoboldUnreachable(
                f"cannot reach your backend ({describe_network_error(error)}): "
                f"is it running at {self.url}?"
            ) from None
        data = json_body(response)
        if response.status_code != 200 or data is None:
            shape = "" if response.status_code != 200 else " without JSON"
            self.seen.append(f"GET {path}: {response.status_code}{shape}")
            return None
        return data


def detect(
    url: str,
    *,
    protocol: Protocol | None = None,
    apikey: str | None = None,
    generate_timeout: float = 300.0,
    probe_timeout: float = 10.0,
) -> Found:
    """Probe `url`; raise KoboldUnreachable (nothing answers) or NoBackend (no usable API)."""
    url = url.rstrip("/")
    for suffix in URL_SUFFIXES:
        url = url.removesuffix(suffix)
    probe = _Prober(url, apikey, probe_timeout)
    common: dict[str, Any] = {"generate_timeout": generate_timeout, "apikey": apikey}
    if protocol != "openai":
        version = probe.get("/api/extra/version")
        if isinstance(version, dict) and version.get("result") == "KoboldCpp":
            number = version.get("version")
            named = f"KoboldCpp {number}" if isinstance(number, str) and number else "KoboldCpp"
            client = KoboldClient(url, koboldcpp=True, version=number, **common)
            return Found(client, f"{named} at {url} (KoboldAI API)")
        model = probe.get("/api/v1/model")
        if isinstance(model, dict) and isinstance(model.get("result"), str):
            info = probe.get("/api/v1/info/version")
            number = info.get("result") if isinstance(info, dict) else None
            api = f", KoboldAI API {number}" if isinstance(number, str) else ""
            client = KoboldClient(url, **common)
            return Found(client, f"KoboldAI at {url} (KoboldAI United or compatible{api})")
    if protocol != "kobold":
        models = probe.get("/v1/models")
        if isinstance(models, dict) and isinstance(models.get("data"), list):
            kind, version = _openai_kind(probe, models["data"])
            flavour = FLAVOURS[kind]
            client = OpenAIClient(url, flavour, version=version, **common)
            named = f"{flavour.label} {version}" if version else flavour.label
            return Found(client, f"{named} at {url} (OpenAI-compatible API)")
    wanted = {
        "kobold": "the KoboldAI API (GET /api/v1/model)",
        "openai": "an OpenAI-compatible API (GET /v1/models)",
        None: "the KoboldAI API (GET /api/v1/model) or an OpenAI-compatible API (GET /v1/models)",
    }[protocol]
    seen = "; ".join(probe.seen) or "nothing usable"
    raise NoBackend(
        f"the server at {url} does not offer {wanted} ({seen}); the bridge needs one of "
        "KoboldAI, KoboldCpp, llama.cpp server, Ollama, vLLM, TabbyAPI or another "
        "OpenAI-compatible server there: check --backend-url"
    )


def _openai_kind(probe: _Prober, data: list[Any]) -> tuple[str, str | None]:
    """Which OpenAI-compatible server this is, and its version when it says."""
    first = data[0] if data and isinstance(data[0], dict) else {}
    owner = str(first.get("owned_by") or "").lower()
    if owner == "koboldcpp":
        return "koboldcpp", None  # only with --backend openai: KoboldCpp was tried first
    if owner == "vllm" or "max_model_len" in first:
        version = probe.get("/version")
        return "vllm", version.get("version") if isinstance(version, dict) else None
    props = probe.get("/props")
    if owner == "llamacpp" or (isinstance(props, dict) and "default_generation_settings" in props):
        build = props.get("build_info") if isinstance(props, dict) else None
        return "llamacpp", build if isinstance(build, str) else None
    card = probe.get("/v1/model")
    if owner == "tabbyapi" or (isinstance(card, dict) and "parameters" in card):
        return "tabbyapi", None
    version = probe.get("/api/version")
    if isinstance(version, dict) and isinstance(version.get("version"), str):
        return "ollama", version["version"]
    info = probe.get("/v1/internal/model/info")
    if isinstance(info, dict) and "model_name" in info:
        return "textgen", None
    return "openai", None
