"""The original KoboldAI Cluster API, spoken by the bridge (`--protocol original`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn

import requests

from bridge.cluster.base import (
    CREDENTIAL_CODES,
    Capabilities,
    ClusterRejected,
    ClusterUnavailable,
    HttpCluster,
    Job,
    NoWork,
    Submitted,
    error_code,
    error_message,
    job_ttl,
    no_work,
    submit_counts,
)
from bridge.net import json_body

if TYPE_CHECKING:
    from bridge.config import Config
    from bridge.fitting import PromptFit


class OriginalClusterProtocol(HttpCluster):
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
        if response.status_code == 403 and error_code(data) == "WorkerMaintenance":
            return NoWork(maintenance=error_message(response, data))
        self._raise_for_pop(response, data)

    def submit(
        self, job: Job, text: str, tokens: int | None = None, prompt: PromptFit | None = None
    ) -> Submitted:
        return self._submit(job, {"generation": text, **submit_counts(tokens, prompt)})

    def give_back(self, job: Job, text: str = "") -> Submitted:
        return self._submit(job, {"generation": text, "state": "faulted"})

    def _submit(self, job: Job, fields: dict[str, Any]) -> Submitted:
        body = {"id": job.id, **fields, **self._credentials(with_username=False)}
        response = self._post("/generate/submit", body)
        data = json_body(response)
        message = error_message(response, data)
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
            return no_work(data)
        payload, ttl = data.get("payload"), data.get("ttl")
        if not isinstance(data["id"], str) or not isinstance(payload, dict):
            raise ClusterUnavailable("the cluster sent a job without an id or a payload")
        return Job(id=data["id"], payload=payload, ttl=job_ttl(ttl))

    def _raise_for_pop(self, response: requests.Response, data: Any) -> NoReturn:
        status, message, rc = response.status_code, error_message(response, data), error_code(data)
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
