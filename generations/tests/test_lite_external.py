"""KoboldAI Lite, unchanged and with its default settings, writes a story with the cluster.

Lite is the one HTML file of a checkout the user gives (./test_external.sh --lite DIR: a Lite
checkout's index.html, or a KoboldCpp checkout's klite.embd), served from a web server of its
own on loopback as users open it: every call to the cluster is cross-origin (CORS). Chromium
drives it as a user does: pick the connection, type the cluster's URL, connect, switch to Story
Mode, type the start of a story, click Submit, and wait for the continuation.

Lite's defaults (`defaultsettings` in index.html, page opened without `?local=`; read again at
run time from the fresh page): `max_context_length` 6144, `max_length` 768, `tokenstreammode` 2
(streaming over server-sent events) in Lite v339 (July 2026). The cluster's only server
(FakeKoboldAI behind the bridge) allows 4096 and 512: less than Lite asks, as a home GPU does.

KoboldCpp's copy of Lite (klite.embd; v180 in KoboldCpp 1.76) is built to be served by the
KoboldCpp it talks to: it connects by itself when the page opens, to its own origin or to the
`?host=&port=` of the page's URL (used here), with `max_context_length` 4096, `max_length` 200
and streaming; it hides the menu of other services, so its OpenAI connection is not tested.

Both connections stream; each is tried with a quick server and with a slow one, whose text
comes after several of the cluster's keep-alive comments: Lite's stream readers (a regular
expression over the bytes) must wait through them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.tests.processes import wait_until
from generations.tests.frontends import (
    MODEL,
    SLOW_SERVER_SECONDS,
    SSE_COMMENT,
    STREAMS_KEEP_ALIVE,
    Traffic,
    chromium_page,
    lite_file,
    lite_version,
    seconds_until_shown,
    static_file_server,
)

pytestmark = [pytest.mark.e2e, pytest.mark.external]
# Streamed connections are tried with a quick server and with one slower than the keep-alives.
SERVER_SPEEDS = pytest.mark.parametrize(
    "server_seconds", [0.0, SLOW_SERVER_SECONDS], ids=["quick-server", "slow-server"]
)


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return STREAMS_KEEP_ALIVE


STORY = "Once upon a time, in a quiet village at the edge of the forest,"
# The story text in Lite's page holds FakeKoboldAI's words (15 hex digits after a space).
MESSAGE_SHOWN = "() => !document.getElementById('msgboxcontainer').classList.contains('hidden')"
HAS_GENERATED_TEXT = "() => / [0-9a-f]{15}/.test(document.getElementById('gametext').innerText)"


@dataclass
class Lite:
    """Lite's page in a fresh browser (default settings), and what it asks of the cluster."""

    page: Any
    traffic: Traffic
    url: str  # where Lite's file is served
    html: Path  # Lite's file
    # KoboldCpp's copy (klite.embd) is built to be served by the KoboldCpp it talks to: it
    # connects by itself on load, to its own origin or to `?host=&port=`, and hides the menu
    # of other services.
    embedded: bool

    def open(self, query: str = "") -> None:
        self.page.goto(self.url + query)
        self.page.wait_for_function("() => typeof localsettings === 'object'")
        dismiss_messages(self.page)
        welcome = self.page.locator("#welcomecontainer")
        if welcome.is_visible():
            welcome.get_by_role("button", name="Set UI").click()  # keeps the Classic UI
        dismiss_messages(self.page)


@pytest.fixture
def lite(small_server: Any) -> Iterator[Lite]:
    html = lite_file()
    embedded = re.search(r"var localflag\s*=\s*true", html.read_text(errors="replace"))
    with static_file_server(html) as page_url, chromium_page() as page:
        traffic = Traffic(small_server.url)
        traffic.watch(page)
        print(f"KoboldAI Lite {lite_version(html)} from {html}")
        yield Lite(page, traffic, page_url, html, bool(embedded))


def dismiss_messages(page: Any, quiet_ms: int = 800) -> None:
    """Click OK on Lite's message boxes until none comes for a moment (on a closed network it
    reports that the AI Horde, its default service, cannot be reached)."""
    deadline_quiet = quiet_ms
    while deadline_quiet > 0:
        if page.locator("#msgboxcontainer").is_visible():
            page.click("#msgboxbtnok")
            deadline_quiet = quiet_ms
        page.wait_for_timeout(100)
        deadline_quiet -= 100


def open_endpoint_dialog(page: Any, api: str) -> None:
    page.locator("a.nav-link:visible", has_text=re.compile(r"^(Select Endpoint|AI)$")).click()
    page.select_option("#customapidropdown", label=api)
    dismiss_messages(page)


def story_mode(page: Any) -> None:
    page.locator("a.nav-link:visible", has_text=re.compile(r"^Settings$")).click()
    page.select_option("#opmode", label="Story Mode")
    page.locator('button[onclick="confirm_settings()"]:visible').first.click()
    dismiss_messages(page)


def defaults(page: Any) -> dict[str, int]:
    settings = page.evaluate(
        "() => ({max_context_length: localsettings.max_context_length,"
        " max_length: localsettings.max_length, tokenstreammode: +localsettings.tokenstreammode})"
    )
    print(f"Lite's settings: {settings}")
    return settings


def submit_story(page: Any, traffic: Traffic, what: str) -> float:
    page.fill("#input_text", STORY)
    submit = lambda: page.click("#btnsend")  # noqa: E731
    seconds = seconds_until_shown(page, submit, HAS_GENERATED_TEXT, what, traffic)
    print(f"{what}: Submit to first text {seconds:.2f} s")
    return seconds


def connect_koboldai(lite: Lite) -> dict[str, int]:
    """Open Lite and connect over "KoboldAI Remote API" to the cluster, in Story Mode; returns
    Lite's settings."""
    page, traffic = lite.page, lite.traffic
    if lite.embedded:  # KoboldCpp's Lite: told where its KoboldCpp is by the page's URL
        lite.open(f"?host=127.0.0.1&port={traffic.cluster_url.rsplit(':', 1)[1]}")
    else:
        lite.open()
        open_endpoint_dialog(page, "KoboldAI Remote API")
        page.fill("#customkoboldendpoint", traffic.cluster_url)
        page.click('button[onclick="connect_custom_endpoint()"]')
    # Lite recognises a KoboldCpp (from /api/extra/version) and so streams.
    page.wait_for_function(
        "() => document.getElementById('connectstatus').innerText.includes('KoboldCpp')"
    )
    dismiss_messages(page)
    story_mode(page)
    return defaults(page)


@SERVER_SPEEDS
def test_lite_koboldai_remote_api_continues_a_story(lite, record_property, server_seconds):
    page, traffic = lite.page, lite.traffic
    asked = connect_koboldai(lite)

    seconds = submit_story(page, traffic, "Lite, KoboldAI Remote API")
    record_property("submit_to_first_text_s", round(seconds, 2))

    streamed = asked["tokenstreammode"] == 2
    path = "/api/extra/generate/stream" if streamed else "/api/v1/generate"
    (sent,) = traffic.bodies(path)
    assert (sent["max_context_length"], sent["max_length"]) == (
        asked["max_context_length"],
        asked["max_length"],
    )
    assert sent["prompt"].endswith(STORY)
    assert sent["genkey"].startswith("KCPP")
    if server_seconds:  # the stream Lite read had keep-alive comments before the text
        assert SSE_COMMENT.search(traffic.answer_text(path))
    assert not traffic.failures, "\n".join(traffic.failures)  # none on the connect path


@SERVER_SPEEDS
def test_lite_openai_compatible_api_continues_a_story(lite, record_property, server_seconds):
    if lite.embedded:
        pytest.skip("KoboldCpp's Lite (klite.embd) hides the menu of other services")
    page, traffic = lite.page, lite.traffic
    lite.open()
    asked = defaults(page)
    open_endpoint_dialog(page, "OpenAI Compatible API")
    page.fill("#custom_oai_endpoint", f"{traffic.cluster_url}/v1")
    page.click("#oaifetchlist")  # the model list, from /v1/models
    page.wait_for_function(
        "model => document.getElementById('custom_oai_model').value === model", arg=MODEL
    )
    page.click('button[onclick="connect_custom_endpoint()"]')
    dismiss_messages(page)
    story_mode(page)

    seconds = submit_story(page, traffic, "Lite, OpenAI Compatible API")
    record_property("submit_to_first_text_s", round(seconds, 2))

    # Lite turns "Use ChatCompletions API" on for a fetched model that is not an instruct one.
    (sent,) = traffic.bodies("/v1/chat/completions")
    assert sent["model"] == MODEL
    assert sent["max_tokens"] == asked["max_length"]
    assert sent["stream"] is (asked["tokenstreammode"] != 0)
    assert sent["messages"][-1] == {"role": "user", "content": STORY}
    if server_seconds:
        assert SSE_COMMENT.search(traffic.answer_text("/v1/chat/completions"))
    assert not traffic.failures, "\n".join(traffic.failures)


@pytest.mark.parametrize("server_seconds", [8.0])
def test_lite_abort_cancels_its_generation(lite):
    """[ABORT] while the server generates: Lite posts its genkey to /api/extra/abort, and the
    cluster cancels that generation (`success`, as KoboldCpp answers); no text comes."""
    page, traffic = lite.page, lite.traffic
    connect_koboldai(lite)
    page.fill("#input_text", STORY)
    page.click("#btnsend")
    wait_until(lambda: traffic.bodies("/api/extra/generate"), "Lite's generate", timeout=10)
    page.wait_for_timeout(1000)  # the server has begun
    with page.expect_response(lambda answer: "/api/extra/abort" in answer.url) as aborted:
        page.click("#abortgen")
    (sent,) = traffic.bodies("/api/extra/abort")
    (generate,) = traffic.bodies("/api/extra/generate")
    assert sent == {"genkey": generate["genkey"]}
    assert (aborted.value.status, aborted.value.json()) == (200, {"success": True})
    page.wait_for_timeout(9000)  # past the server's time
    assert not page.evaluate(HAS_GENERATED_TEXT)


def test_lite_openai_model_nobody_serves_is_told_at_once(lite, record_property):
    """Connected without "Fetch", Lite keeps its first model, gpt-3.5-turbo-instruct, which no
    server of the cluster serves: the cluster answers at once (404 model_not_found, naming the
    models it serves) and Lite shows that, instead of a request that waits for minutes."""
    if lite.embedded:
        pytest.skip("KoboldCpp's Lite (klite.embd) hides the menu of other services")
    page, traffic = lite.page, lite.traffic
    lite.open()
    open_endpoint_dialog(page, "OpenAI Compatible API")
    page.fill("#custom_oai_endpoint", f"{traffic.cluster_url}/v1")
    page.click('button[onclick="connect_custom_endpoint()"]')
    dismiss_messages(page)
    story_mode(page)

    page.fill("#input_text", STORY)
    submit = lambda: page.click("#btnsend")  # noqa: E731
    seconds = seconds_until_shown(page, submit, MESSAGE_SHOWN, "Lite's message box", traffic)
    print(f"Lite, OpenAI Compatible API, a model nobody serves: error shown in {seconds:.2f} s")
    record_property("submit_to_error_s", round(seconds, 2))

    (sent,) = traffic.bodies("/v1/completions")  # an instruct model: text completions
    assert sent["model"] == "gpt-3.5-turbo-instruct"
    shown = page.inner_text("#msgboxcontainer")
    assert "gpt-3.5-turbo-instruct" in shown and MODEL in shown, shown
    assert traffic.failures == [f"404 POST {traffic.cluster_url}/v1/completions"]


def test_lite_opened_as_a_file_continues_a_story(lite):
    """Lite opened from disk (file://, its origin `null`): the cluster's CORS answers let it
    connect and stream as from a web server."""
    if lite.embedded:
        pytest.skip("KoboldCpp's Lite (klite.embd) is served by KoboldCpp, not opened as a file")
    lite.url = lite.html.as_uri()
    connect_koboldai(lite)
    submit_story(lite.page, lite.traffic, "Lite from file://, KoboldAI Remote API")
    assert lite.traffic.bodies("/api/extra/generate/stream")
    assert not lite.traffic.failures, "\n".join(lite.traffic.failures)
