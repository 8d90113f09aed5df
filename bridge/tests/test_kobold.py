"""The KoboldAI client against FakeKoboldAI, the test double of KoboldAI's API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from bridge.kobold import (
    GenerationFailed,
    KoboldBusy,
    KoboldClient,
    KoboldUnreachable,
    ModelInfo,
    NoModelLoaded,
    NotKoboldAI,
    PayloadRefused,
    cluster_model_name,
)
from bridge.tests.kai_double import FakeKoboldAI, fake_text

REPO = Path(__file__).resolve().parents[2]
JOB = {"prompt": "Once upon a time", "max_length": 40, "max_context_length": 1024, "n": 1}


@pytest.fixture
def kai() -> Iterator[FakeKoboldAI]:
    with FakeKoboldAI() as double:
        yield double


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_model_info(kai):
    kai.model, kai.max_length, kai.max_context_length = "KoboldAI_OPT-13B-Erebus", 256, 1024
    info = KoboldClient(kai.url).model_info()
    assert info == ModelInfo("KoboldAI_OPT-13B-Erebus", 256, 1024)
    assert info.cluster_name == "KoboldAI/OPT-13B-Erebus"


@pytest.mark.parametrize(
    ("reported", "advertised"),
    [
        ("KoboldAI_OPT-13B-Erebus", "KoboldAI/OPT-13B-Erebus"),
        ("koboldcpp/Llama-3-8B", "koboldcpp/Llama-3-8B"),
        ("EleutherAI_gpt_neo_2.7B", "EleutherAI/gpt_neo_2.7B"),
        ("plainname", "plainname"),
    ],
)
def test_model_name_gets_its_slash_back(reported, advertised):
    assert cluster_model_name(reported) == advertised


@pytest.mark.parametrize("suffix", ["", "/", "/api", "/api/", "/api/v1", "/api/latest"])
def test_the_apis_address_works_as_well_as_the_servers(kai, suffix):
    client = KoboldClient(kai.url + suffix)
    assert client.url == kai.url
    assert client.model_info().name == kai.model


def test_no_model_loaded(kai):
    kai.model = "ReadOnly"
    with pytest.raises(NoModelLoaded, match=f"KoboldAI at {kai.url} has no model loaded"):
        KoboldClient(kai.url).model_info()


def test_unreachable_kobold_says_where_it_looked():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(KoboldUnreachable) as caught:
        KoboldClient(url).model_info()
    assert str(caught.value) == (
        f"cannot reach KoboldAI (connection refused): is KoboldAI running at {url}?"
    )


def test_another_web_server_is_not_kobold(kai):
    kai.not_kobold = True
    with pytest.raises(NotKoboldAI) as caught:
        KoboldClient(kai.url).model_info()
    assert str(caught.value) == (
        f"the server at {kai.url} is not KoboldAI (GET /api/latest/model answered 404); "
        "check --backend-url"
    )


class _HtmlEverywhere(BaseHTTPRequestHandler):
    """A web app that answers 200 with HTML on every path, as single-page apps do."""

    def do_GET(self) -> None:
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_200_without_the_api_json_is_not_kobold():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HtmlEverywhere)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(NotKoboldAI, match="answered 200 but not with the KoboldAI API's JSON"):
            KoboldClient(url).model_info()
    finally:
        server.shutdown()
        server.server_close()


def test_generate_returns_the_text_and_asks_for_quiet(kai):
    kai.tokens = 8
    assert KoboldClient(kai.url).generate(JOB).text == fake_text(JOB["prompt"], 8)
    assert kai.payloads == [{**JOB, "quiet": True}]
    assert len(fake_text(JOB["prompt"], 8)) == 32


def test_generate_never_exceeds_the_jobs_max_length(kai):
    text = KoboldClient(kai.url).generate({**JOB, "max_length": 3}).text
    assert text == fake_text(JOB["prompt"], 3) and len(text) == 12


def test_busy(kai):
    kai.busy_next = 2
    client = KoboldClient(kai.url)
    for _ in range(2):
        with pytest.raises(KoboldBusy, match=r"KoboldAI is busy \(503\)"):
            client.generate(JOB)
    assert client.generate(JOB)


def test_refused_payload_names_the_field(kai):
    with pytest.raises(PayloadRefused) as caught:
        KoboldClient(kai.url).generate({**JOB, "temperature": 0})
    assert str(caught.value) == (
        "KoboldAI refused the job's parameters: temperature: Must be greater than 0."
    )


def test_payload_beyond_the_models_limits_is_refused(kai):
    kai.max_length = 32
    with pytest.raises(PayloadRefused, match="max_length"):
        KoboldClient(kai.url).generate(JOB)


def test_server_error(kai):
    kai.fail_next = 1
    with pytest.raises(GenerationFailed, match="KoboldAI answered 500 to generate"):
        KoboldClient(kai.url).generate(JOB)


def test_slow_generation_times_out(kai):
    kai.delay = 1.0
    client = KoboldClient(kai.url, generate_timeout=0.2)
    with pytest.raises(KoboldUnreachable, match=r"no answer in time\): is KoboldAI running"):
        client.generate(JOB)


def test_a_longer_timeout_than_the_default_may_be_asked_for(kai):
    kai.delay = 0.4
    client = KoboldClient(kai.url, generate_timeout=0.2)
    assert client.generate(JOB, timeout=2.0).text == fake_text(JOB["prompt"])
    with pytest.raises(KoboldUnreachable, match="no answer in time"):
        client.generate(JOB, timeout=0.1)  # never below the default


def test_death_mid_generation_and_revival(kai):
    kai.delay = 5.0
    client = KoboldClient(kai.url)
    threading.Timer(0.2, kai.die).start()
    started = time.monotonic()
    with pytest.raises(KoboldUnreachable, match="connection lost"):
        client.generate(JOB)
    assert time.monotonic() - started < 4  # not the 5 s the generation would take
    with pytest.raises(KoboldUnreachable, match="connection refused"):
        client.model_info()
    kai.delay = 0.0
    kai.revive()
    # The same client (and its pooled connection) works again once KoboldAI is back.
    assert client.generate(JOB).text == fake_text(JOB["prompt"], 16)


def test_concurrent_generations_and_the_concurrency_limit(kai):
    kai.delay, kai.max_concurrent = 0.3, 2
    client = KoboldClient(kai.url)
    outcomes: list[str] = []

    def generate(prompt: str) -> None:
        try:
            outcomes.append(client.generate({**JOB, "prompt": prompt}).text)
        except KoboldBusy:
            outcomes.append("busy")

    threads = [threading.Thread(target=generate, args=(f"p{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == sorted([fake_text("p0"), fake_text("p1"), "busy"])


def test_control_endpoint_steers_the_double(kai):
    state = requests.post(f"{kai.url}/_double/control", json={"refuse_next": 1}, timeout=5).json()
    assert state["refuse_next"] == 1
    with pytest.raises(PayloadRefused):
        KoboldClient(kai.url).generate(JOB)
    answer = requests.post(f"{kai.url}/_double/control", json={"oops": 1}, timeout=5)
    assert answer.status_code == 400
    state = requests.get(f"{kai.url}/_double/state", timeout=5).json()
    assert (state["generate_calls"], state["generated"]) == (1, 0)


def test_control_endpoint_can_kill_the_double_for_a_while(kai):
    client = KoboldClient(kai.url)
    requests.post(f"{kai.url}/_double/control", json={"die_for": 0.5}, timeout=5)
    time.sleep(0.2)
    with pytest.raises(KoboldUnreachable):
        client.model_info()
    deadline = time.monotonic() + 5
    while not kai.alive and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.model_info().name == kai.model


def test_double_runs_as_a_process():
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge.tests.kai_double", "--port", "0", "--model", "M_x"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        url = line.split(" on ")[1].strip()
        client = KoboldClient(url)
        assert client.model_info() == ModelInfo("M_x", 512, 2048)
        assert client.generate(JOB).text == fake_text(JOB["prompt"])
        state = json.loads(requests.get(f"{url}/_double/state", timeout=5).text)
        assert state["generated"] == 1
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
