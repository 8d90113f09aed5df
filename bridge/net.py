"""Small helpers shared by the two HTTP clients (KoboldAI and the cluster)."""

from __future__ import annotations

import threading
from typing import Any

import requests


class ThreadSessions:
    """One `requests.Session` per thread: requests does not promise that sharing one is safe,
    and a session per thread keeps its connections alive between calls."""

    def __init__(self, headers: dict[str, str] | None = None) -> None:
        self._headers = headers or {}
        self._local = threading.local()

    def get(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers.update(self._headers)
        return session


def describe_network_error(error: requests.RequestException) -> str:
    """A few words for a log line instead of urllib3's paragraph-long exception text."""
    if isinstance(error, requests.ConnectTimeout):
        return "connection timed out"
    if isinstance(error, requests.ReadTimeout):
        return "no answer in time"
    text = str(error).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "getaddrinfo" in text or "resolve" in text:
        return "unknown host name"
    if isinstance(error, requests.ConnectionError):
        return "connection lost"
    return type(error).__name__


def json_body(response: requests.Response) -> Any:
    """The decoded JSON body, or None when the body is not JSON (an HTML error page, say)."""
    try:
        return response.json()
    except ValueError:
        return None
