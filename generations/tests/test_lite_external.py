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
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from generations.tests.frontends import (
    MODEL,
    Traffic,
    chromium_page,
    lite_file,
    lite_version,
    static_file_server,
    time_to_first_text,
)

pytestmark = [pytest.mark.e2e, pytest.mark.external]

STORY = "Once upon a time, in a quiet village at the edge of the forest,"
# The story text in Lite's page holds FakeKoboldAI's words (15 hex digits after a space).
HAS_GENERATED_TEXT = "() => / [0-9a-f]{15}/.test(document.getElementById('gametext').innerText)"


@pytest.fixture
def lite(small_server: Any) -> Any:
    """Lite's page, fresh (default settings), with what it asks of the cluster recorded."""
    html = lite_file()
    with static_file_server(html) as page_url, chromium_page() as page:
        traffic = Traffic(small_server.url)
        traffic.watch(page)
        page.goto(page_url)
        page.wait_for_function("() => typeof localsettings === 'object'")
        dismiss_messages(page)
        welcome = page.locator("#welcomecontainer")
        if welcome.is_visible():
            welcome.get_by_role("button", name="Set UI").click()  # keeps the Classic UI
        dismiss_messages(page)
        print(f"KoboldAI Lite {lite_version(html)} from {html}")
        yield page, traffic


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
    return page.evaluate(
        "() => ({max_context_length: localsettings.max_context_length,"
        " max_length: localsettings.max_length, tokenstreammode: +localsettings.tokenstreammode})"
    )


def submit_story(page: Any, traffic: Traffic, what: str) -> float:
    page.fill("#input_text", STORY)
    submit = lambda: page.click("#btnsend")  # noqa: E731
    seconds = time_to_first_text(page, submit, HAS_GENERATED_TEXT, what, traffic)
    print(f"{what}: Submit to first text {seconds:.2f} s")
    return seconds


def test_lite_koboldai_remote_api_continues_a_story(lite, record_property):
    page, traffic = lite
    asked = defaults(page)
    open_endpoint_dialog(page, "KoboldAI Remote API")
    page.fill("#customkoboldendpoint", traffic.cluster_url)
    page.click('button[onclick="connect_custom_endpoint()"]')
    # Lite recognises a KoboldCpp (from /api/extra/version) and so streams.
    page.wait_for_function(
        "() => document.getElementById('connectstatus').innerText.includes('KoboldCpp')"
    )
    dismiss_messages(page)
    story_mode(page)

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
    assert not traffic.failures, traffic.failures  # no 404 on the connect path either


def test_lite_openai_compatible_api_continues_a_story(lite, record_property):
    page, traffic = lite
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
    assert not traffic.failures, traffic.failures
