"""The AI Horde v2 text API, spoken by the bridge (`--protocol horde`)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, NoReturn

import requests

from bridge.cluster.base import (
    ANONYMOUS_KEY,
    CREDENTIAL_CODES,
    Capabilities,
    ClusterError,
    ClusterRejected,
    ClusterUnavailable,
    HttpCluster,
    Job,
    NoWork,
    Submitted,
    error_code,
    error_message,
    job_ttl,
    log,
    no_work,
    submit_counts,
)
from bridge.net import json_body

if TYPE_CHECKING:
    from bridge.config import Config
    from bridge.fitting import PromptFit


class HordeProtocol(HttpCluster):
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
        if response.status_code == 403 and error_code(data) == "WorkerMaintenance":
            self._log_messages(data.get("messages") if isinstance(data, dict) else None)
            return NoWork(maintenance=error_message(response, data))
        self._raise_for_pop(response, data)

    def submit(
        self, job: Job, text: str, tokens: int | None = None, prompt: PromptFit | None = None
    ) -> Submitted:
        # No seed: KoboldAI does not report the one it used, and the field is optional.
        fields = {"generation": text, "state": "ok", **submit_counts(tokens, prompt)}
        return self._submit(job.id, fields)

    def give_back(self, job: Job, text: str = "") -> Submitted:
        # The AI Horde's faulted submit carries no text: the next worker starts again.
        return self._submit(job.id, {"generation": "", "state": "faulted"})

    def _submit(self, job_id: str, fields: dict[str, Any]) -> Submitted:
        response = self._post(self.submit_path, {"id": job_id, **fields})
        data = json_body(response)
        status, message, rc = response.status_code, error_message(response, data), error_code(data)
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
            return no_work(data)
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
        return Job(id=ids[0], payload=payload, ttl=job_ttl(data.get("ttl")))

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
        status, message, rc = response.status_code, error_message(response, data), error_code(data)
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
