"""Every HTTP call to the cluster lives here.

The worker loop sees only `ClusterProtocol`: pop a job, submit a text, give a job back. The
original cluster API is `OriginalClusterProtocol`; a second protocol (the AI Horde v2 API,
`--protocol horde`) can be added beside it as another class with the same three methods,
registered in `PROTOCOLS`, without touching the loop.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, Protocol

import requests

from bridge.net import describe_network_error, json_body

# Error codes that mean "these credentials are not good enough", whatever the status.
CREDENTIAL_CODES = {
    "WrongCredentials",
    "InvalidCredentials",
    "CredentialsRequired",
    "InvalidAPIKey",
}


class ClusterError(Exception):
    """Base class; the message is one line meant for the contributor."""


class ClusterUnavailable(ClusterError):
    """A network error, a 5xx or a rate limit: retry later with backoff."""


class ClusterRejected(ClusterError):
    """The cluster refuses this server (credentials, name, settings): retrying cannot help."""


class NotACluster(ClusterRejected):
    """Whatever answered does not speak the cluster's API: a wrong URL, if it never did."""


@dataclass(frozen=True)
class Capabilities:
    """What this server can serve right now, sent with every pop."""

    model: str
    max_length: int
    max_context_length: int


@dataclass
class Job:
    """One generation slot handed to this server."""

    id: str
    payload: dict[str, Any]
    ttl: float | None  # seconds the cluster gives us to submit, from the moment of the pop
    received: float = field(default_factory=time.monotonic)

    @property
    def deadline(self) -> float | None:
        """The `time.monotonic()` after which the cluster may hand the slot to someone else."""
        return None if self.ttl is None else self.received + self.ttl


@dataclass(frozen=True)
class NoWork:
    """The pop found nothing for us; `maintenance` holds the cluster's message if that is why."""

    skipped: dict[str, Any] = field(default_factory=dict)
    maintenance: str | None = None


@dataclass(frozen=True)
class Submitted:
    """How the cluster took a submit.

    accepted: stored and paid (`reward` tokens); duplicate: it already had this job's result;
    expired: the job is unknown or gone (took too long, or the request expired); refused: the
    cluster rejected this submit for another reason (`message`), so retrying cannot help.
    """

    outcome: Literal["accepted", "duplicate", "expired", "refused"]
    reward: int | None = None
    message: str = ""


class ClusterProtocol(Protocol):
    """The cluster as the worker loop sees it. Implementations must be thread-safe."""

    url: str

    def pop(self, capabilities: Capabilities) -> Job | NoWork:
        """Ask for one job. Raises ClusterUnavailable or ClusterRejected."""
        ...

    def submit(self, job: Job, text: str) -> Submitted:
        """Deliver a generated text. Raises ClusterUnavailable or ClusterRejected."""
        ...

    def give_back(self, job: Job) -> Submitted:
        """Report the job as failed so the cluster hands its slot to another server, unpaid."""
        ...


class OriginalClusterProtocol:
    """The original KoboldAI Cluster API: POST /generate/pop and POST /generate/submit."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        username: str | None = None,
        password: str | None = None,
        apikey: str | None = None,
        threads: int = 1,
        bridge_agent: str,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.name = name
        self.username = username
        self.password = password
        self.apikey = apikey
        self.threads = threads
        self.bridge_agent = bridge_agent
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._local = threading.local()

    @property
    def _session(self) -> requests.Session:
        # One session per worker thread: requests does not promise that sharing one is safe.
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            if self.apikey:
                session.headers["apikey"] = self.apikey
        return session

    def pop(self, capabilities: Capabilities) -> Job | NoWork:
        body: dict[str, Any] = {
            "name": self.name,
            "model": capabilities.model,
            "max_length": capabilities.max_length,
            # The original API's spelling for the context length.
            "max_content_length": capabilities.max_context_length,
            "bridge_agent": self.bridge_agent,
            "threads": self.threads,
        }
        body.update(self._credentials(with_username=True))
        response = self._post("/generate/pop", body)
        data = json_body(response)
        if response.status_code == 200 and isinstance(data, dict) and "id" in data:
            return self._parse_pop(data)
        if response.status_code == 403 and _rc(data) == "WorkerMaintenance":
            return NoWork(maintenance=_message(response, data))
        self._raise_for_pop(response, data)

    def submit(self, job: Job, text: str) -> Submitted:
        return self._submit(job, {"generation": text})

    def give_back(self, job: Job) -> Submitted:
        return self._submit(job, {"generation": "", "state": "faulted"})

    def _submit(self, job: Job, fields: dict[str, Any]) -> Submitted:
        body = {"id": job.id, **fields, **self._credentials(with_username=False)}
        response = self._post("/generate/submit", body)
        data = json_body(response)
        message = _message(response, data)
        if response.status_code == 200:
            reward = data.get("reward") if isinstance(data, dict) else None
            return Submitted("accepted", reward if isinstance(reward, int) else None)
        if response.status_code == 404:
            return Submitted("expired", message=message)
        if response.status_code == 400 and "already submitted" in message.lower():
            return Submitted("duplicate", message=message)
        if response.status_code in (401, 403):
            raise ClusterRejected(f"the cluster rejected the credentials: {message}")
        self._raise_if_transient(response)
        return Submitted("refused", message=f"{message} ({response.status_code})")

    def _credentials(self, *, with_username: bool) -> dict[str, str]:
        # With an API key the header identifies us; send a password only if one was configured.
        credentials = {}
        if with_username and self.username:
            credentials["username"] = self.username
        if self.password:
            credentials["password"] = self.password
        return credentials

    def _post(self, path: str, body: dict[str, Any]) -> requests.Response:
        try:
            return self._session.post(
                f"{self.url}{path}", json=body, timeout=(self.connect_timeout, self.timeout)
            )
        except requests.RequestException as error:
            raise ClusterUnavailable(
                f"cannot reach the cluster at {self.url} ({describe_network_error(error)})"
            ) from None

    def _parse_pop(self, data: dict[str, Any]) -> Job | NoWork:
        if data["id"] is None:
            skipped = data.get("skipped")
            return NoWork(skipped=skipped if isinstance(skipped, dict) else {})
        payload, ttl = data.get("payload"), data.get("ttl")
        if not isinstance(data["id"], str) or not isinstance(payload, dict):
            raise ClusterUnavailable("the cluster sent a job without an id or a payload")
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0:
            ttl = None
        return Job(id=data["id"], payload=payload, ttl=ttl)

    def _raise_for_pop(self, response: requests.Response, data: Any) -> NoReturn:
        status, message, rc = response.status_code, _message(response, data), _rc(data)
        self._raise_if_transient(response)
        if status == 401 or rc in CREDENTIAL_CODES:
            raise ClusterRejected(f"the cluster rejected the credentials: {message}")
        if rc == "AnonForbiddenWorker":
            raise ClusterRejected(
                f"the cluster does not let anonymous users run servers ({message}): "
                "set --username and --password, or --apikey"
            )
        if status in (400, 403) and isinstance(data, dict):
            errors = data.get("errors")
            if isinstance(errors, dict) and errors:
                message += " (" + ", ".join(f"{k}: {v}" for k, v in errors.items()) + ")"
            raise ClusterRejected(f"the cluster refused this server: {message}")
        raise NotACluster(
            f"the server at {self.url} is not a KoboldAI Cluster (POST /generate/pop answered "
            f"{status}); check --cluster-url"
        )

    def _raise_if_transient(self, response: requests.Response) -> None:
        status = response.status_code
        if status == 429:
            raise ClusterUnavailable("the cluster asks this server to slow down (429)")
        if status >= 500:
            raise ClusterUnavailable(f"the cluster at {self.url} answered {status}")


def _rc(data: Any) -> str | None:
    return data.get("rc") if isinstance(data, dict) else None


def _message(response: requests.Response, data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"]
    return f"HTTP {response.status_code}"


# Protocol name (for a future --protocol option) -> implementation.
PROTOCOLS: dict[str, Callable[..., ClusterProtocol]] = {"cluster": OriginalClusterProtocol}
