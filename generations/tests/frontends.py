"""Real front-ends for the `external` tests: KoboldAI Lite and SillyTavern from checkouts the
user gives (./test_external.sh --lite DIR --sillytavern DIR), driven in Debian's chromium.

Nothing of either program is in this repository: the tests read them from the folders named by
KOBOLDAI_LITE_DIR and SILLYTAVERN_DIR, and skip, saying what to fetch, when those are not set.
Every browser, server and process started here is stopped on leaving, whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.tests.processes import Process, free_port, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Without these, chromium on a closed network waits on Google's services and QUIC probes.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The one server of these tests allows less than the front-ends' defaults ask for.
MODEL = "koboldcpp/Mistral-7B-Instruct-v0.3.Q4_K_M"
SERVER_MAX_LENGTH = 512
SERVER_MAX_CONTEXT = 4096
# A slow server takes longer than the cluster's streams stay silent (a keep-alive comment
# every second in these tests, KOBOLDCLUSTER_STREAM_KEEPALIVE_SECONDS): the front-ends' stream
# readers must wait through the comments.
SLOW_SERVER_SECONDS = 4.0
STREAMS_KEEP_ALIVE = {"KOBOLDCLUSTER_STREAM_KEEPALIVE_SECONDS": "1"}
SSE_COMMENT = re.compile(r"^:", re.MULTILINE)
# How long a user waits for the first text before the test calls it stranded.
FIRST_TEXT_TIMEOUT_S = 60
LIMIT_FIELDS = ("max_context_length", "max_length", "max_tokens", "stream", "streaming")


@pytest.fixture
def server_seconds() -> float:
    """How long the server takes for a generation (tests parametrize it: a slow home GPU)."""
    return 0.0


@pytest.fixture
def small_server(cluster: Any, kai_double: Any, bridge_process: Any, server_seconds: float) -> Any:
    """The cluster with one server, FakeKoboldAI behind the project's bridge, that allows
    max_length 512 and a context of 4096 (less than the front-ends' defaults), checked in."""
    kai = kai_double(
        *("--model", MODEL, "--max-length", str(SERVER_MAX_LENGTH)),
        *("--max-context-length", str(SERVER_MAX_CONTEXT), "--delay", str(server_seconds)),
    )
    bridge = bridge_process(
        *("--cluster-url", cluster.url, "--kai-url", kai.url, "--name", "home-gpu"),
        *("--username", "bob", "--password", "s3cret-pass"),
    )
    servers = f"{cluster.url}/servers"
    wait_until(lambda: requests.get(servers, timeout=10).json(), "the server", watch=[bridge])
    return cluster


def program_dir(variable: str, what: str) -> Path:
    """The checkout named by `variable`, or skip saying how to give it."""
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set: run ./test_external.sh with the {what} checkout")
    return Path(value)


def lite_file() -> Path:
    """Lite's one HTML file: a Lite checkout's index.html, or a KoboldCpp checkout's klite.embd."""
    folder = program_dir("KOBOLDAI_LITE_DIR", "--lite DIR (KoboldAI Lite)")
    for name in ("index.html", "klite.embd"):
        if (folder / name).is_file():
            return folder / name
    raise AssertionError(f"{folder} has neither index.html nor klite.embd (KoboldAI Lite)")


def lite_version(html: Path) -> str:
    found = re.search(r"LITEVER\s*=\s*(\d+)", html.read_text(encoding="utf-8", errors="replace"))
    return f"v{found.group(1)}" if found else "unknown"


@contextmanager
def static_file_server(page_file: Path) -> Iterator[str]:
    """Serve one HTML file at http://127.0.0.1:<port>/, as a user opens Lite from any web
    server (its own origin: every call to the cluster is cross-origin)."""
    body = page_file.read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/", "/index.html"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Traffic:
    """What the page asked of the cluster (and of SillyTavern's server), as the browser saw it."""

    cluster_url: str
    requests: list[tuple[str, str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    answers: list[Any] = field(default_factory=list)  # the answers to those POSTs

    def watch(self, page: Any, also: str = "") -> None:
        prefixes = tuple(p for p in (self.cluster_url, also) if p)

        def on_request(request: Any) -> None:
            if request.url.startswith(prefixes):
                body = request.post_data
                with_json = _json_or_text(body) if body else None
                self.requests.append((request.method, request.url, with_json))

        def on_response(response: Any) -> None:
            if response.url.startswith(self.cluster_url) and response.status >= 400:
                self.failures.append(f"{response.status} {response.request.method} {response.url}")
            if response.url.startswith(prefixes) and response.request.method == "POST":
                self.answers.append(response)

        page.on("request", on_request)
        page.on("response", on_response)

    def bodies(self, path: str) -> list[Any]:
        return [body for method, url, body in self.requests if method == "POST" and path in url]

    def answer_text(self, path: str) -> str:
        """The whole body of the answer to the one POST to `path` (a stream once it ended)."""
        (answer,) = [a for a in self.answers if path in a.url]
        return answer.text()

    def first_byte_seconds(self, path: str) -> float:
        """Seconds from sending the one POST to `path` to the first byte of its answer: the
        part of Submit-to-first-text spent behind the page (SillyTavern's server and the
        cluster, or the cluster alone)."""
        (answer,) = [a for a in self.answers if path in a.url]
        return answer.request.timing["responseStart"] / 1000

    def summary(self) -> list[str]:
        """Each call, with the limits a generate body asked for."""
        lines = []
        for method, url, body in self.requests:
            limits = ""
            if isinstance(body, dict):
                asked = {k: body[k] for k in LIMIT_FIELDS if k in body}
                limits = f" {asked}" if asked else ""
            lines.append(f"{method} /{url.split('/', 3)[-1]}{limits}")
        return lines + [f"answered {failure}" for failure in self.failures]


def _json_or_text(body: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body


@contextmanager
def chromium_page(viewport: dict[str, int] | None = None) -> Iterator[Any]:
    """A page in a fresh headless chromium (new profile: the front-end's default settings)."""
    from playwright.sync_api import sync_playwright

    if CHROMIUM is None:
        pytest.fail("chromium is not installed: ./test_external.sh installs it (apt-get, as root)")
    profile = tempfile.mkdtemp(prefix="kc-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport=viewport or {"width": 1280, "height": 900},
            )
            try:
                yield context.new_page()
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def seconds_until_shown(
    page: Any, submit: Callable[[], None], shown: str, what: str, traffic: Traffic
) -> float:
    """Seconds from `submit()` (the user's click) until the JavaScript predicate `shown` holds
    in the page (the first text, or an error); fails after FIRST_TEXT_TIMEOUT_S with what the
    page had asked."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    started = time.monotonic()
    submit()
    try:
        page.wait_for_function(shown, polling=20, timeout=FIRST_TEXT_TIMEOUT_S * 1000)
    except PlaywrightTimeout:
        asked = "\n".join(f"  {line}" for line in traffic.summary())
        raise AssertionError(
            f"nothing shown in {what} {FIRST_TEXT_TIMEOUT_S} s after Submit; it had asked:\n{asked}"
        ) from None
    return time.monotonic() - started


@dataclass
class SillyTavern:
    """SillyTavern's own server (node server.js) on a free loopback port, with a fresh data
    folder: its defaults (config.yaml: whitelist mode on 127.0.0.1, no basic auth), and the
    command-line options its users pass (--port, --listen false, --autorun false, --dataRoot)."""

    folder: Path
    data: Path
    port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def version(self) -> str:
        return json.loads((self.folder / "package.json").read_text())["version"]

    def start(self) -> SillyTavern:
        node = shutil.which("node")
        assert node, "node is not installed (SillyTavern needs Node.js 18 or newer)"
        args = [node, "server.js", "--port", str(self.port), "--listen", "false"]
        args += ["--autorun", "false", "--dataRoot", str(self.data)]
        self.process = Process(args, cwd=self.folder, env={**os.environ, "NODE_ENV": "production"})
        wait_until(self._answers, "SillyTavern to listen", timeout=120, watch=[self.process])
        return self

    def _answers(self) -> bool:
        try:
            return requests.get(self.url, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
