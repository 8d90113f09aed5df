"""Every HTTP call to the cluster lives here.

The worker loop sees only `ClusterProtocol`: pop a job, submit a text, give a job back. Two
implementations speak it, chosen with `--protocol` through `PROTOCOLS`:

- `OriginalClusterProtocol` (`original`): the original KoboldAI Cluster API, `/generate/pop`
  and `/generate/submit`, with a username and password or an API key;
- `HordeProtocol` (`horde`): the AI Horde v2 text API, `/api/v2/generate/text/pop` and
  `/api/v2/generate/text/submit`, with an API key, so the bridge can join any AI
  Horde-compatible cluster (ours serves both).

Both long-poll when `pop_wait` > 0: the pop asks the cluster to hold it up to that many
seconds until a job arrives (`"wait"`). A cluster that refuses the field (400 naming `wait`)
gets plain pops from then on (`pop_wait` drops to 0); one that ignores it answers at once,
which the worker notices on its clock, so that it sleeps its poll interval as before.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol

import requests

from bridge.net import ThreadSessions, describe_network_error, json_body

if TYPE_CHECKING:
    from bridge.config import Config
    from bridge.fitting import PromptFit

log = logging.getLogger("bridge")

# The AI Horde's key for "no account": it may ask for texts but never run a server.
ANONYMOUS_KEY = "0000000000"

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
    # When the worker got the job, on the worker's clock (`Worker.step` stamps it). Not read
    # here from the system clock: a second clock would make deadlines meaningless whenever a
    # caller (a test, say) injects its own.
    received: float | None = None

    @property
    def deadline(self) -> float | None:
        """The time on the worker's clock after which the cluster may hand the slot to
        someone else; None without a ttl or before the job is stamped."""
        if self.ttl is None or self.received is None:
            return None
        return self.received + self.ttl


@dataclass(frozen=True)
class NoWork:
    """The pop found nothing for us; `maintenance` holds the cluster's message if that is why."""

    skipped: dict[str, Any] = field(default_factory=dict)
    maintenance: str | None = None
    # The cluster paused this server: why, and what to do (its README: Trust and quality).
    paused: str | None = None


def _no_work(data: dict[str, Any]) -> NoWork:
    skipped, paused = data.get("skipped"), data.get("paused_reason")
    return NoWork(
        skipped=skipped if isinstance(skipped, dict) else {},
        paused=paused if isinstance(paused, str) and paused else None,
    )


@dataclass(frozen=True)
class Submitted:
    """How the cluster took a submit.

    accepted: stored and paid (`reward` tokens); duplicate: it already had this job's result;
    expired: the job is unknown or gone (took too long, or the request expired); refused: the
    cluster rejected this submit for another reason (`message`), so retrying cannot help.
    `kudos` is the AI Horde's reward, which is not a token count in general (on our cluster
    it is, on the AI Horde it depends on the model too), so it is kept apart from `reward`.
    """

    outcome: Literal["accepted", "duplicate", "expired", "refused"]
    reward: int | None = None
    message: str = ""
    kudos: float | None = None


class ClusterProtocol(Protocol):
    """The cluster as the worker loop sees it. Implementations must be thread-safe."""

    url: str
    takes_progress: bool  # whether to post the text so far while generating
    pop_wait: float  # seconds a pop asks the cluster to hold it (0: plain polling)

    def progress(
        self, job: Job, text: str | None
    ) -> Literal["ok", "gone", "unsupported", "failed"]:
        """Post the text generated so far (None: a heartbeat); never raises."""
        ...

    def pop(self, capabilities: Capabilities) -> Job | NoWork:
        """Ask for one job. Raises ClusterUnavailable or ClusterRejected."""
        ...

    def submit(
        self, job: Job, text: str, tokens: int | None = None, prompt: PromptFit | None = None
    ) -> Submitted:
        """Deliver a generated text and, when the backend counted them, its tokens (sent as
        `token_count`, which our cluster pays when plausible and others ignore) and how the
        prompt was sent (`prompt_tokens`, `prompt_trimmed`). Raises ClusterUnavailable or
        ClusterRejected."""
        ...

    def give_back(self, job: Job, text: str = "") -> Submitted:
        """Report the job as failed so the cluster hands its slot to another server. `text`
        is what the backend generated before it stopped: our cluster keeps it, pays it and
        has the next server continue from it (others ignore it)."""
        ...

    def leave(self, capabilities: Capabilities) -> bool:
        """Say this server stops (best effort, never raises; True if the cluster answered)."""
        ...


class _HttpCluster:
    """What both protocols share: one requests session per thread, posting JSON, and the
    statuses that mean "try again later"."""

    # Shown in "the server at ... is not <kind> (POST <path> answered ...)".
    kind = "a KoboldAI Cluster"
    pop_path = "/generate/pop"
    progress_path = "/generate/progress"
    progress_timeout = 5.0  # progress is a courtesy: never wait long for it

    def __init__(
        self,
        url: str,
        *,
        name: str,
        apikey: str | None = None,
        threads: int = 1,
        bridge_agent: str,
        pop_wait: float = 0.0,
        connect_timeout: float = 5.0,
        timeout: float = 30.0,
    ) -> None:
        # The legacy bridge joined URLs with "+", so a trailing slash produced "//api/v2/...".
        self.url = url.rstrip("/")
        self.name = name
        self.apikey = apikey
        self.threads = threads
        self.bridge_agent = bridge_agent
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.pop_wait = pop_wait  # 0: plain polling; set to 0 when the cluster refuses "wait"
        # Whether to post the text so far while generating; off for good once the cluster
        # shows it has no progress endpoint (the AI Horde has none).
        self.takes_progress = True
        self._sessions = ThreadSessions({"apikey": apikey} if apikey else None)

    @property
    def _session(self) -> requests.Session:
        return self._sessions.get()

    def _post(
        self, path: str, body: dict[str, Any], read: float | None = None
    ) -> requests.Response:
        try:
            return self._session.post(
                f"{self.url}{path}", json=body, timeout=(self.connect_timeout, read or self.timeout)
            )
        except requests.RequestException as error:
            raise ClusterUnavailable(
                f"cannot reach the cluster at {self.url} ({describe_network_error(error)})"
            ) from None

    def _pop_request(self, body: dict[str, Any]) -> tuple[requests.Response, Any]:
        """POST the pop, long-polling if enabled: the response and its JSON. Falls back to a
        plain pop when the cluster refuses `wait`."""
        wait = self.pop_wait
        if wait <= 0:
            response = self._post(self.pop_path, body)
            return response, json_body(response)
        # The read timeout must outlast the hold, plus the cluster's own work.
        response = self._post(self.pop_path, {**body, "wait": wait}, read=wait + self.timeout)
        data = json_body(response)
        if response.status_code == 400 and _names_field(data, "wait"):
            if self.pop_wait:
                log.info(
                    'the cluster at %s does not hold pops (it refused "wait"); polling every '
                    "interval instead",
                    self.url,
                )
            self.pop_wait = 0.0
            response = self._post(self.pop_path, body)
            return response, json_body(response)
        return response, data

    def progress(
        self, job: Job, text: str | None
    ) -> Literal["ok", "gone", "unsupported", "failed"]:
        """Post the whole text generated so far for `job` (`bridge.progress` throttles);
        without text, a heartbeat (`bridge.heartbeat`)."""
        text_field = {} if text is None else {"text": text}
        body = {"id": job.id, **text_field, **self._progress_credentials()}
        try:
            response = self._session.post(
                f"{self.url}{self.progress_path}",
                json=body,
                timeout=(self.connect_timeout, self.progress_timeout),
            )
        except requests.RequestException as error:
            log.debug("job %s: progress not sent (%s)", job.id[:8], describe_network_error(error))
            return "failed"
        status, rc = response.status_code, _rc(json_body(response))
        if status == 200:
            return "ok"
        if status == 404 and rc in ("InvalidJobID", "AbortedGen"):
            return "gone"
        if status in (404, 405):
            if self.takes_progress:
                log.info(
                    "the cluster at %s does not take progress (%s %d); sending results only",
                    self.url,
                    self.progress_path,
                    status,
                )
            self.takes_progress = False
            return "unsupported"
        log.debug("job %s: progress answered %d", job.id[:8], status)
        return "failed"

    def _progress_credentials(self) -> dict[str, str]:
        return {}

    def _pop_body(self, capabilities: Capabilities) -> dict[str, Any]:
        raise NotImplementedError

    def leave(self, capabilities: Capabilities) -> bool:
        """Tell the cluster this server stops: a pop with `"leaving": true` (never held),
        after which our cluster shows it inactive at once instead of minutes later. Best
        effort, one try; a cluster that ignores the field may hand out a job, given back."""
        body = {**self._pop_body(capabilities), "leaving": True}
        try:
            response = self._session.post(
                f"{self.url}{self.pop_path}", json=body, timeout=(self.connect_timeout, 5.0)
            )
        except requests.RequestException as error:
            log.debug("could not tell the cluster we leave: %s", describe_network_error(error))
            return False
        data = json_body(response)
        if response.status_code != 200 or not isinstance(data, dict):
            return False
        ids = [data.get("id"), *(data.get("ids") or [])]
        for job_id in dict.fromkeys(i for i in ids if isinstance(i, str)):
            with contextlib.suppress(ClusterError):  # else its ttl passes
                self.give_back(Job(job_id, {}, None))
        return True

    def _raise_if_transient(self, response: requests.Response) -> None:
        status = response.status_code
        if status == 429:
            raise ClusterUnavailable("the cluster asks this server to slow down (429)")
        if status >= 500:
            raise ClusterUnavailable(f"the cluster at {self.url} answered {status}")

    def _not_a_cluster(self, status: int, hint: str = "") -> NotACluster:
        return NotACluster(
            f"the server at {self.url} is not {self.kind} (POST {self.pop_path} answered "
            f"{status}); check --cluster-url{hint}"
        )

    def _refused(self, data: Any, message: str) -> ClusterRejected:
        if isinstance(data, dict):
            errors = data.get("errors")
            if isinstance(errors, dict) and errors:
                message += " (" + ", ".join(f"{k}: {v}" for k, v in errors.items()) + ")"
        return ClusterRejected(f"the cluster refused this server: {message}")


class OriginalClusterProtocol(_HttpCluster):
    """The original KoboldAI Cluster API: POST /generate/pop and POST /generate/submit."""

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        **common: Any,
    ) -> None:
        super().__init__(url, **common)
        self.username = username
        self.password = password

    @classmethod
    def from_config(cls, config: Config, *, bridge_agent: str) -> OriginalClusterProtocol:
        return cls(
            config.cluster_url,
            name=config.name,
            username=config.username,
            password=config.password,
            apikey=config.apikey,
            threads=config.threads,
            bridge_agent=bridge_agent,
            pop_wait=config.pop_wait,
        )

    def _pop_body(self, capabilities: Capabilities) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": capabilities.model,
            "max_length": capabilities.max_length,
            # The original API's spelling for the context length.
            "max_content_length": capabilities.max_context_length,
            "bridge_agent": self.bridge_agent,
            "threads": self.threads,
            **self._credentials(with_username=True),
        }

    def pop(self, capabilities: Capabilities) -> Job | NoWork:
        response, data = self._pop_request(self._pop_body(capabilities))
        if response.status_code == 200 and isinstance(data, dict) and "id" in data:
            return self._parse_pop(data)
        if response.status_code == 403 and _rc(data) == "WorkerMaintenance":
            return NoWork(maintenance=_message(response, data))
        self._raise_for_pop(response, data)

    def submit(
        self, job: Job, text: str, tokens: int | None = None, prompt: PromptFit | None = None
    ) -> Submitted:
        return self._submit(job, {"generation": text, **_counts(tokens, prompt)})

    def give_back(self, job: Job, text: str = "") -> Submitted:
        return self._submit(job, {"generation": text, "state": "faulted"})

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

    def _progress_credentials(self) -> dict[str, str]:
        return self._credentials(with_username=False)

    def _credentials(self, *, with_username: bool) -> dict[str, str]:
        # With an API key the header identifies us; send a password only if one was configured.
        credentials = {}
        if with_username and self.username:
            credentials["username"] = self.username
        if self.password:
            credentials["password"] = self.password
        return credentials

    def _parse_pop(self, data: dict[str, Any]) -> Job | NoWork:
        if data["id"] is None:
            return _no_work(data)
        payload, ttl = data.get("payload"), data.get("ttl")
        if not isinstance(data["id"], str) or not isinstance(payload, dict):
            raise ClusterUnavailable("the cluster sent a job without an id or a payload")
        return Job(id=data["id"], payload=payload, ttl=_ttl(ttl))

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
            raise self._refused(data, message)
        raise self._not_a_cluster(status)


class HordeProtocol(_HttpCluster):
    """The AI Horde v2 text API (research/horde-v2-text-api.md §2.3, §2.4): POST
    /api/v2/generate/text/pop and /api/v2/generate/text/submit, identified by the `apikey`
    header alone. Asks for one job per pop (`amount` 1): each worker thread serves one job."""

    kind = "an AI Horde-compatible cluster"
    pop_path = "/api/v2/generate/text/pop"
    submit_path = "/api/v2/generate/text/submit"
    progress_path = "/api/v2/generate/text/progress"

    def __init__(self, url: str, *, apikey: str, nsfw: bool = True, **common: Any) -> None:
        if not apikey:
            raise ValueError("the horde protocol needs an API key")
        super().__init__(url, apikey=apikey, **common)
        # The horde's effective default (its parser's; its schema says false). Text requests
        # are never marked NSFW, so for text this changes nothing; sent to be explicit.
        self.nsfw = nsfw
        self._messages_seen: set[str] = set()
        self._messages_lock = threading.Lock()

    @classmethod
    def from_config(cls, config: Config, *, bridge_agent: str) -> HordeProtocol:
        if config.apikey is None:
            raise ValueError("the horde protocol needs an API key")
        return cls(
            config.cluster_url,
            name=config.name,
            apikey=config.apikey,
            threads=config.threads,
            bridge_agent=bridge_agent,
            pop_wait=config.pop_wait,
        )

    def _pop_body(self, capabilities: Capabilities) -> dict[str, Any]:
        return {
            "name": self.name,
            "models": [capabilities.model],
            "max_length": capabilities.max_length,
            "max_context_length": capabilities.max_context_length,
            "bridge_agent": self.bridge_agent,
            "threads": self.threads,
            "amount": 1,
            # KoboldAI's soft prompts are not offered: a job asking for one goes elsewhere.
            "softprompts": [],
            "nsfw": self.nsfw,
        }

    def pop(self, capabilities: Capabilities) -> Job | NoWork:
        response, data = self._pop_request(self._pop_body(capabilities))
        if (
            response.status_code == 200
            and isinstance(data, dict)
            and ("id" in data or "ids" in data)
        ):
            self._log_messages(data.get("messages"))
            return self._parse_pop(data, capabilities)
        if response.status_code == 403 and _rc(data) == "WorkerMaintenance":
            self._log_messages(data.get("messages") if isinstance(data, dict) else None)
            return NoWork(maintenance=_message(response, data))
        self._raise_for_pop(response, data)

    def submit(
        self, job: Job, text: str, tokens: int | None = None, prompt: PromptFit | None = None
    ) -> Submitted:
        # No seed: KoboldAI does not report the one it used, and the field is optional.
        fields = {"generation": text, "state": "ok", **_counts(tokens, prompt)}
        return self._submit(job.id, fields)

    def give_back(self, job: Job, text: str = "") -> Submitted:
        # The AI Horde's faulted submit carries no text: the next worker starts again.
        return self._submit(job.id, {"generation": "", "state": "faulted"})

    def _submit(self, job_id: str, fields: dict[str, Any]) -> Submitted:
        response = self._post(self.submit_path, {"id": job_id, **fields})
        data = json_body(response)
        status, message, rc = response.status_code, _message(response, data), _rc(data)
        if status == 200:
            reward = data.get("reward") if isinstance(data, dict) else None
            number = isinstance(reward, int | float) and not isinstance(reward, bool)
            return Submitted("accepted", kudos=float(reward) if number else None)
        if status == 404:
            # InvalidJobID: unknown, or its request expired and was deleted.
            return Submitted("expired", message=message)
        if status == 400 and "already submitted" in message.lower():
            return Submitted("duplicate", message=message)
        if status == 400 and rc == "AbortedGen":
            # The job timed out and went back to the queue. The legacy bridge resubmitted such
            # a result forever; it can never be accepted, so move on.
            return Submitted("expired", message=message)
        if status == 401 or rc in CREDENTIAL_CODES:
            raise ClusterRejected(f"the cluster rejected the credentials: {message}")
        self._raise_if_transient(response)
        if status == 403:
            raise ClusterRejected(f"the cluster refused this server: {message}")
        return Submitted("refused", message=f"{message} ({status})")

    def _parse_pop(self, data: dict[str, Any], capabilities: Capabilities) -> Job | NoWork:
        ids = [job_id for job_id in data.get("ids") or [] if isinstance(job_id, str)]
        if isinstance(data.get("id"), str) and data["id"] not in ids:
            ids.insert(0, data["id"])
        if not ids:
            return _no_work(data)
        if len(ids) > 1:
            # We asked for one; the others would sit unserved until their ttl passed.
            log.warning("the cluster sent %d jobs for one pop; giving back the others", len(ids))
            self._give_back_ids(ids[1:])
        payload, model = data.get("payload"), data.get("model")
        if not isinstance(payload, dict):
            self._give_back_ids(ids[:1])
            raise ClusterUnavailable("the cluster sent a job without a payload")
        if isinstance(model, str) and model != capabilities.model:
            # Generating it with another model would hand the requester the wrong model's text.
            log.warning(
                "job %s: the cluster asks for model %s, but KoboldAI serves %s; giving it back",
                ids[0][:8],
                model,
                capabilities.model,
            )
            self._give_back_ids(ids[:1])
            return NoWork()
        return Job(id=ids[0], payload=payload, ttl=_ttl(data.get("ttl")))

    def _give_back_ids(self, ids: list[str]) -> None:
        for job_id in ids:
            try:
                self._submit(job_id, {"generation": "", "state": "faulted"})
            except ClusterError as error:
                # Best effort: the cluster re-queues the job when its ttl passes anyway.
                log.debug("job %s: could not give it back: %s", job_id[:8], error)

    def _log_messages(self, messages: Any) -> None:
        """Moderators' messages to this server come with every pop: say each one once."""
        if not isinstance(messages, list):
            return
        for entry in messages:
            if not isinstance(entry, dict) or not isinstance(entry.get("message"), str):
                continue
            key = str(entry.get("id") or entry["message"])
            with self._messages_lock:
                if key in self._messages_seen:
                    continue
                self._messages_seen.add(key)
            origin = entry.get("origin")
            source = f" from {origin}" if isinstance(origin, str) and origin else ""
            log.warning("message%s to this server: %s", source, " ".join(entry["message"].split()))

    def _raise_for_pop(self, response: requests.Response, data: Any) -> NoReturn:
        status, message, rc = response.status_code, _message(response, data), _rc(data)
        self._raise_if_transient(response)
        if rc == "AnonForbiddenWorker":
            anonymous = " (0000000000 is the anonymous key)" if self.apikey == ANONYMOUS_KEY else ""
            raise ClusterRejected(
                f"the cluster does not let the anonymous user run servers ({message}): "
                f"set --apikey to an API key of your account{anonymous}"
            )
        if status == 401 or rc in CREDENTIAL_CODES:
            raise ClusterRejected(f"the cluster rejected the credentials: {message}")
        if status in (400, 403) and isinstance(data, dict) and "message" in data:
            raise self._refused(data, message)
        # The JS client's base URL ends in /api/v2 and horde-sdk's in /api/: easy to copy here.
        api = self.url.endswith(("/api", "/api/v2"))
        raise self._not_a_cluster(
            status, ": give the cluster's address without /api" if api else ""
        )


def _counts(tokens: int | None, prompt: PromptFit | None) -> dict[str, int]:
    """A submit's counts, each only when known: the generated tokens (`token_count`), the
    prompt's tokens as sent and those cut from its front to fit (this cluster's extension;
    the AI Horde ignores fields it does not know)."""
    counts = {} if tokens is None else {"token_count": tokens}
    if prompt is not None:
        counts.update(prompt_tokens=prompt.tokens, prompt_trimmed=prompt.trimmed)
    return counts


def _names_field(data: Any, name: str) -> bool:
    """Whether an error body blames `name` (`{"errors": {name: ...}}`, as both APIs say)."""
    errors = data.get("errors") if isinstance(data, dict) else None
    return isinstance(errors, dict) and name in errors


def _rc(data: Any) -> str | None:
    return data.get("rc") if isinstance(data, dict) else None


def _message(response: requests.Response, data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"]
    return f"HTTP {response.status_code}"


def _ttl(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return value


# The --protocol option's values -> implementation (config.PROTOCOL_NAMES lists the same).
PROTOCOLS: dict[str, type[OriginalClusterProtocol] | type[HordeProtocol]] = {
    "original": OriginalClusterProtocol,
    "horde": HordeProtocol,
}
