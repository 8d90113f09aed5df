"""SillyTavern, unchanged and with its default settings, chats with the cluster.

SillyTavern is a checkout the user gives (./test_external.sh --sillytavern DIR, which installs
its npm dependencies there as SillyTavern's start.sh does). Its own server runs on a free
loopback port with a fresh data folder, with the settings its users pass on the command line
(`--port`, `--listen false`, `--autorun false`, `--dataRoot`); config.yaml keeps its defaults
(whitelist mode for 127.0.0.1, no basic auth). Chromium drives its page as a new user does:
the welcome dialog, API Connections, the cluster's URL, Connect, the bundled character
Seraphina, a message, Send; the reply must appear.

SillyTavern's defaults (default/content/settings.json, 1.12.6): KoboldAI Classic sends
`max_length` 350 (`amount_gen`) and `max_context_length` 8192 (`max_context`), not streamed;
Chat Completion sends `max_tokens` 300 (`openai_max_tokens`) for a context of 4095
(`openai_max_context`), streamed (`stream_openai`). The cluster's only server allows
max_length 512 and a context of 4096: KoboldAI Classic asks for more context than it has.
SillyTavern's server makes the calls to the cluster (no CORS involved): the test sees the
browser's requests to SillyTavern, whose bodies carry the fields forwarded to the cluster.
Chat Completion streams: it is tried with a quick server and with a slow one, whose text comes
after several of the cluster's keep-alive comments.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from generations.tests.frontends import (
    MODEL,
    SLOW_SERVER_SECONDS,
    SSE_COMMENT,
    STREAMS_KEEP_ALIVE,
    SillyTavern,
    Traffic,
    chromium_page,
    program_dir,
    seconds_until_shown,
)

pytestmark = [pytest.mark.e2e, pytest.mark.external]
# Streamed connections are tried with a quick server and with one slower than the keep-alives.
SERVER_SPEEDS = pytest.mark.parametrize(
    "server_seconds", [0.0, SLOW_SERVER_SECONDS], ids=["quick-server", "slow-server"]
)


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return STREAMS_KEEP_ALIVE


MESSAGE = "Hello there! Who are you, and where am I?"
# The last chat message is the character's, and holds FakeKoboldAI's words.
HAS_REPLY = """() => {
    const last = [...document.querySelectorAll('#chat .mes')].pop();
    return !!last && last.getAttribute('is_user') === 'false'
        && / [0-9a-f]{15}/.test(last.querySelector('.mes_text').innerText);
}"""


@pytest.fixture
def sillytavern(small_server: Any, tmp_path: Path) -> Iterator[tuple[Any, Traffic, SillyTavern]]:
    """SillyTavern's server and its page, fresh (default settings), past the welcome dialog."""
    folder = program_dir("SILLYTAVERN_DIR", "--sillytavern DIR (SillyTavern)")
    server = SillyTavern(folder, tmp_path / "sillytavern-data")
    try:
        server.start()
        print(f"SillyTavern {server.version} from {folder}")
        with chromium_page() as page:
            traffic = Traffic(small_server.url)
            traffic.watch(page, also=f"{server.url}/api/backends/")
            page.goto(server.url)
            # A new user is asked for a persona name first; the default, "User", is kept.
            page.locator("dialog[open] .popup-button-ok").click()
            page.locator("dialog[open]").wait_for(state="detached")
            yield page, traffic, server
    finally:
        server.stop()


def open_api_connections(page: Any, api: str) -> None:
    page.click("#sys-settings-button .drawer-toggle")
    page.select_option("#main_api", label=api)


def type_url(page: Any, field: str, url: str) -> None:
    page.fill(field, url)
    page.locator(field).press("Tab")  # closes the field's history list, which covers Connect


def send_to_seraphina(page: Any, traffic: Traffic, what: str) -> float:
    page.click("#rightNavHolder .drawer-toggle")
    page.locator(".character_select", has_text="Seraphina").click()
    page.wait_for_function("() => document.querySelectorAll('#chat .mes').length === 1")
    page.fill("#send_textarea", MESSAGE)
    submit = lambda: page.click("#send_but")  # noqa: E731
    seconds = seconds_until_shown(page, submit, HAS_REPLY, what, traffic)
    behind = traffic.first_byte_seconds("/generate")
    print(f"{what}: Submit to first text {seconds:.2f} s, {behind:.2f} s of it behind the page")
    return seconds


def test_sillytavern_koboldai_classic_gets_a_reply(sillytavern, record_property):
    page, traffic, server = sillytavern
    open_api_connections(page, "KoboldAI Classic")
    type_url(page, "#api_url_text", traffic.cluster_url)
    page.click("#api_button")
    page.locator("#kobold_api .online_status_text", has_text=MODEL).wait_for()

    seconds = send_to_seraphina(page, traffic, "SillyTavern, KoboldAI Classic")
    record_property("submit_to_first_text_s", round(seconds, 2))

    (status,) = traffic.bodies("/api/backends/kobold/status")
    assert status["api_server"] == f"{traffic.cluster_url}/api"
    (sent,) = traffic.bodies("/api/backends/kobold/generate")
    assert (sent["max_context_length"], sent["max_length"]) == (8192, 350)  # its defaults
    assert sent["streaming"] is False
    assert sent["prompt"].rstrip().endswith("Seraphina:")
    assert MESSAGE in sent["prompt"]
    assert "Kobold returned error" not in server.process.output  # its server's own calls
    assert page.locator("#toast-container .toast-error").count() == 0


@SERVER_SPEEDS
def test_sillytavern_chat_completion_gets_a_reply(sillytavern, record_property, server_seconds):
    page, traffic, server = sillytavern
    open_api_connections(page, "Chat Completion")
    page.select_option("#chat_completion_source", "custom")
    type_url(page, "#custom_api_url_text", f"{traffic.cluster_url}/v1")
    page.click("#api_button_openai")
    # No model typed: SillyTavern takes the first one the cluster's /v1/models lists.
    page.wait_for_function(
        "model => document.getElementById('custom_model_id').value === model", arg=MODEL
    )

    seconds = send_to_seraphina(page, traffic, "SillyTavern, Chat Completion")
    record_property("submit_to_first_text_s", round(seconds, 2))

    assert "status check failed" not in server.process.output  # its server's GET /v1/models
    (sent,) = traffic.bodies("/api/backends/chat-completions/generate")
    assert sent["custom_url"] == f"{traffic.cluster_url}/v1"
    assert (sent["model"], sent["max_tokens"], sent["stream"]) == (MODEL, 300, True)
    last = sent["messages"][-1]
    assert (last["role"], last["content"]) == ("user", MESSAGE)
    if server_seconds:  # SillyTavern's server passed the keep-alive comments on to its page
        assert SSE_COMMENT.search(traffic.answer_text("/api/backends/chat-completions/generate"))
    assert page.locator("#toast-container .toast-error").count() == 0
