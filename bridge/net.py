"""Small helpers shared by the two HTTP clients (KoboldAI and the cluster)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
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


def sse_events(response: requests.Response) -> Iterator[tuple[str, str]]:
    """The (event, data) pairs of a Server-Sent Events stream, each as soon as it arrives."""
    buffer = b""
    event, data = "message", []
    for chunk in _arriving(response):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", "replace")
            if not line:
                if data:
                    yield event, "\n".join(data)
                event, data = "message", []
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif line.startswith("event:"):
                event = line[6:].strip()
    if data:
        yield event, "\n".join(data)


def _arriving(response: requests.Response) -> Iterator[bytes]:
    """A streamed body's bytes as they arrive. requests' `iter_content` waits for a whole
    chunk of the size asked for (or, with None, for the end of a body that is not sent
    chunked, as KoboldCpp's streams are not): either would hold back every event."""
    read1 = getattr(response.raw, "read1", None)  # urllib3 2
    if read1 is None:
        yield from response.iter_content(chunk_size=1)  # urllib3 1: slower, but prompt
        return
    while chunk := read1(65536, decode_content=True):
        yield chunk
