"""What every cluster protocol shares (`bridge/cluster/`): the errors, the job, the pop's and
submit's answers, the protocol the worker loop sees, and the HTTP plumbing of both APIs."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import requests

from bridge.net import ThreadSessions, describe_network_error, json_body

if TYPE_CHECKING:
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


def no_work(data: dict[str, Any]) -> NoWork:
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


class HttpCluster:
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
        if response.status_code == 400 and names_field(data, "wait"):
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
        status, rc = response.status_code, error_code(json_body(response))
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


def submit_counts(tokens: int | None, prompt: PromptFit | None) -> dict[str, int]:
    """A submit's counts, each only when known: the generated tokens (`token_count`), the
    prompt's tokens as sent and those cut from its front to fit (this cluster's extension;
    the AI Horde ignores fields it does not know)."""
    counts = {} if tokens is None else {"token_count": tokens}
    if prompt is not None:
        counts.update(prompt_tokens=prompt.tokens, prompt_trimmed=prompt.trimmed)
    return counts


def names_field(data: Any, name: str) -> bool:
    """Whether an error body blames `name` (`{"errors": {name: ...}}`, as both APIs say)."""
    errors = data.get("errors") if isinstance(data, dict) else None
    return isinstance(errors, dict) and name in errors


def error_code(data: Any) -> str | None:
    return data.get("rc") if isinstance(data, dict) else None


def error_message(response: requests.Response, data: Any) -> str:
    if isinstance(data, dict) and isinstance(data.get("message"), str):
        return data["message"]
    return f"HTTP {response.status_code}"


def job_ttl(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return value
