"""`python -m bridge` as a real process, against the two test doubles (no Django involved)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from bridge.tests.cluster_double import ScriptedCluster
from bridge.tests.kai_double import FakeKoboldAI, fake_text
from bridge.tests.processes import REPO, Process, bridge_env, start_bridge

FAST = {"BRIDGE_INTERVAL": "0.05", "BRIDGE_BACKOFF_BASE": "0.05", "BRIDGE_BACKOFF_MAX": "0.2"}
ID1 = "11111111-aaaa-4aaa-8aaa-111111111111"
ID2 = "22222222-bbbb-4bbb-8bbb-222222222222"


@pytest.fixture
def kai() -> Iterator[FakeKoboldAI]:
    with FakeKoboldAI() as double:
        yield double


@pytest.fixture
def scripted_cluster() -> Iterator[ScriptedCluster]:
    server = ScriptedCluster().start()
    yield server
    server.stop()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture
def run_bridge(tmp_path, processes, kai, scripted_cluster):
    """Start `python -m bridge` against the doubles; extra flags and env may be given."""

    def run(*args: str, **env: str) -> Process:
        flags = ["--kai-url", kai.url, "--cluster-url", scripted_cluster.url, "--name", "bob-1"]
        flags += ["--username", "bob", "--password", "pw"]
        process = start_bridge(tmp_path, *flags, *args, **{**FAST, **env})
        processes.append(process)
        return process

    return run


def error_lines(process: Process) -> list[str]:
    return [line for line in process.lines if "ERROR" in line or "Traceback" in line]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_bad_setting_exits_2_with_one_line_and_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "--name", "s", "--threads", "many"],
        cwd=tmp_path,
        env=bridge_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "bridge: error: --threads must be a whole number from 1 to 50, got 'many'\n"
    )


def test_missing_name_from_a_config_file(tmp_path):
    (tmp_path / "bridgeData.toml").write_text('username = "bob"\npassword = "pw"\n')
    result = subprocess.run(
        [sys.executable, "-m", "bridge"],
        cwd=tmp_path,
        env=bridge_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (
        2,
        "bridge: error: no server name: set --name, BRIDGE_NAME or name in bridgeData.toml\n",
    )


def test_the_unedited_template_exits_2_naming_the_setting(tmp_path):
    template = (REPO / "bridge" / "bridgeData.template.toml").read_text(encoding="utf-8")
    (tmp_path / "bridgeData.toml").write_text(template, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "bridge"],
        cwd=tmp_path,
        env=bridge_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (
        2,
        "bridge: error: name in bridgeData.toml is still the template's placeholder "
        "'my-kobold-server': replace it with your own\n",
    )


def test_help(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "--help"],
        cwd=tmp_path,
        env=bridge_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    assert "--max-context-length TOKENS" in result.stdout


def test_unreachable_kobold_at_start(run_bridge, kai):
    kai.die()
    bridge = run_bridge()
    assert bridge.wait() == 1
    assert error_lines(bridge) == [
        bridge.lines[-1],
    ]
    assert bridge.lines[-1].endswith(
        f"ERROR   cannot reach your backend (connection refused): is it running at {kai.url}?"
    )


def test_not_kobold_at_start(run_bridge, kai):
    kai.not_kobold = True
    bridge = run_bridge()
    assert bridge.wait() == 1
    assert len(error_lines(bridge)) == 1
    assert bridge.lines[-1].endswith(
        f"the server at {kai.url} does not offer the KoboldAI API (GET /api/v1/model) or an "
        "OpenAI-compatible API (GET /v1/models) (GET /api/extra/version: 404; "
        "GET /api/v1/model: 404; GET /v1/models: 404); the bridge "
        "needs one of KoboldAI, KoboldCpp, llama.cpp server, Ollama, vLLM, TabbyAPI or another "
        "OpenAI-compatible server there: check --backend-url"
    )


def test_no_model_loaded_at_start(run_bridge, kai):
    kai.model = "ReadOnly"
    bridge = run_bridge()
    assert bridge.wait() == 1
    assert bridge.lines[-1].endswith(f"KoboldAI at {kai.url} has no model loaded; load one first")


def test_rejected_credentials(run_bridge, scripted_cluster):
    scripted_cluster.answers.append(
        (401, {"message": "Wrong password for bob.", "rc": "InvalidCredentials"})
    )
    bridge = run_bridge()
    assert bridge.wait() == 1
    assert len(error_lines(bridge)) == 1
    assert bridge.lines[-1].endswith(
        "the cluster rejected the credentials: Wrong password for bob."
    )
    assert "stopped:" not in bridge.output


def test_serves_jobs_and_stops_on_ctrl_c_with_a_summary(run_bridge, scripted_cluster, kai):
    scripted_cluster.add_job(ID1, "Once upon a time")
    scripted_cluster.add_job(ID2, "It was a dark and stormy night")
    bridge = run_bridge()
    bridge.wait_for(" tokens/s)", count=2)
    bridge.interrupt()
    assert bridge.wait() == 0
    assert scripted_cluster.submitted[ID1]["generation"] == fake_text("Once upon a time")
    assert scripted_cluster.submitted[ID2]["generation"] == fake_text(
        "It was a dark and stormy night"
    )
    assert kai.payloads[0]["quiet"] is True
    pop = next(body for path, _, body in scripted_cluster.requests if path == "/generate/pop")
    assert pop["model"] == "KoboldAI/FakeModel-1B"
    assert pop["bridge_agent"].startswith("KoboldAI Cluster Bridge:")
    assert "job 11111111: 16 tokens in" in bridge.output
    assert (
        bridge.lines[-1]
        .split("INFO    ")[1]
        .startswith("stopped: 2 jobs done, 0 given back, 0 dropped; 32 tokens at ")
    )
    assert "Once upon" not in bridge.output  # prompts stay private by default


def test_ctrl_c_during_a_job_finishes_it(run_bridge, scripted_cluster, kai):
    kai.delay = 1.0
    scripted_cluster.add_job(ID1, "slow prompt")
    bridge = run_bridge()
    bridge.wait_until(lambda: kai.state()["active"] == 1, "the generation to start")
    bridge.interrupt()
    bridge.wait_for("stopping: finishing the job in progress (Ctrl-C again to quit now)")
    assert bridge.wait() == 0
    assert scripted_cluster.submitted[ID1]["generation"] == fake_text("slow prompt")
    assert "stopped: 1 jobs done" in bridge.lines[-1]


def test_sigterm_stops_gracefully_too(run_bridge, scripted_cluster, kai):
    kai.delay = 0.5
    scripted_cluster.add_job(ID1, "prompt")
    bridge = run_bridge()
    bridge.wait_until(lambda: kai.state()["active"] == 1, "the generation to start")
    bridge.popen.send_signal(signal.SIGTERM)
    assert bridge.wait() == 0
    assert ID1 in scripted_cluster.submitted


def test_second_ctrl_c_quits_at_once(run_bridge, scripted_cluster, kai):
    kai.delay = 30.0
    scripted_cluster.add_job(ID1, "very slow prompt")
    bridge = run_bridge()
    bridge.wait_until(lambda: kai.state()["active"] == 1, "the generation to start")
    bridge.interrupt()
    bridge.wait_for("stopping")
    started = time.monotonic()
    bridge.interrupt()
    assert bridge.wait() == 130
    assert time.monotonic() - started < 20  # not the 30 s the generation would take
    assert "quit at once: 0 jobs done" in bridge.lines[-1]
    assert scripted_cluster.submitted == {}


def test_quiet_shows_only_problems_and_the_final_summary(run_bridge, scripted_cluster):
    scripted_cluster.add_job(ID1, "prompt")
    bridge = run_bridge("-q")
    # Idle again (polling after the submit): a Ctrl-C earlier would find the job in progress.
    bridge.wait_until(lambda: _popped_after_submit(scripted_cluster), "the bridge to be idle")
    bridge.interrupt()
    assert bridge.wait() == 0
    assert [line.split(" ", 2)[2] for line in bridge.lines] == [
        "WARNING stopping",
        "INFO    stopped: 1 jobs done, 0 given back, 0 dropped; "
        + bridge.lines[-1].split("dropped; ")[1],
    ]


def test_verbose_logs_every_request(run_bridge, scripted_cluster):
    bridge = run_bridge("-v")
    bridge.wait_for('"POST /generate/pop HTTP/1.1" 200')
    bridge.wait_for("no work (skipped: nothing)")
    bridge.interrupt()
    assert bridge.wait() == 0


def test_log_prompts_shows_prompt_and_text(run_bridge, scripted_cluster):
    scripted_cluster.add_job(ID1, "show me")
    bridge = run_bridge("--log-prompts")
    bridge.wait_for("job 11111111 prompt: 'show me'")
    bridge.wait_for(f"job 11111111 text: {fake_text('show me')!r}")
    bridge.interrupt()
    assert bridge.wait() == 0


def test_threads_serve_jobs_concurrently(run_bridge, scripted_cluster, kai):
    kai.delay = 1.0
    for number in range(6):
        scripted_cluster.add_job(f"{number:08d}-0000-4000-8000-000000000000", f"prompt {number}")
    bridge = run_bridge("--threads", "3")
    bridge.wait_for("ready; Ctrl-C to stop")  # start-up (backend detection) is not timed
    started = time.monotonic()
    bridge.wait_until(lambda: len(scripted_cluster.submitted) == 6, "six submits")
    elapsed = time.monotonic() - started
    bridge.interrupt()
    assert bridge.wait() == 0
    # Six 1 s jobs one at a time take at least 6 s; three at a time about 2 s, plus whatever
    # a loaded machine adds.
    assert elapsed < 5.0
    assert all(body["threads"] == 3 for path, _, body in scripted_cluster.requests if "pop" in path)
    assert "[worker-" in bridge.output


def test_cluster_port_closed_is_retried_until_it_answers(tmp_path, processes, kai):
    port = free_port()
    bridge = start_bridge(
        tmp_path,
        *("--kai-url", kai.url, "--cluster-url", f"http://127.0.0.1:{port}", "--name", "b"),
        *("--apikey", "k"),
        **FAST,
    )
    processes.append(bridge)
    bridge.wait_for(
        f"cannot reach the cluster at http://127.0.0.1:{port} (connection refused)", count=2
    )
    late = ScriptedCluster(port).start()
    try:
        late.add_job(ID1, "finally")
        bridge.wait_until(lambda: ID1 in late.submitted, "the submit")
        bridge.wait_for(f"the cluster at http://127.0.0.1:{port} answers again")
        bridge.interrupt()
        assert bridge.wait() == 0
    finally:
        late.stop()


def _popped_after_submit(cluster) -> bool:
    paths = [path for path, _, _ in list(cluster.requests)]
    return (
        "/generate/submit" in paths and "/generate/pop" in paths[paths.index("/generate/submit") :]
    )


# --- The AI Horde v2 protocol, against the double's v2 routes ---------------------------------

HORDE = ("--protocol", "horde", "--apikey", "kq3J0fQxWm6f3nB1x0dCZg")


def test_horde_protocol_serves_jobs_and_gives_a_refused_one_back(run_bridge, scripted_cluster, kai):
    scripted_cluster.add_job(ID1, "Once upon a time")
    bridge = run_bridge(*HORDE)
    bridge.wait_until(lambda: ID1 in scripted_cluster.submitted, "the first submit")
    assert scripted_cluster.submitted[ID1] == {
        "id": ID1,
        "generation": fake_text("Once upon a time"),
        "state": "ok",
    }
    kai.refuse_next = 1
    scripted_cluster.add_job(ID2, "refused by KoboldAI")
    bridge.wait_until(lambda: scripted_cluster.faulted == [ID2], "the refused job's give-back")
    bridge.wait_for("job 22222222: given back to the cluster (KoboldAI refused it)")
    bridge.interrupt()
    assert bridge.wait() == 0
    assert "(AI Horde v2 protocol) as 'bob-1'" in bridge.output
    assert "job 11111111: 16 tokens in" in bridge.output
    assert bridge.wait_for("job 11111111: ").endswith(" tokens/s), 16 kudos")
    assert "stopped: 1 jobs done, 1 given back, 0 dropped; 16 tokens at " in bridge.lines[-1]
    assert "; 16 kudos; up " in bridge.lines[-1]
    paths = [path for path, _, _ in scripted_cluster.requests]
    # A heartbeat (bridge/heartbeat.py) finds no progress endpoint: asked at most once.
    assert paths.count("/api/v2/generate/text/progress") <= 1
    assert set(paths) - {"/api/v2/generate/text/progress"} == {
        "/api/v2/generate/text/pop",
        "/api/v2/generate/text/submit",
    }
    pop = next(body for path, _, body in scripted_cluster.requests if path.endswith("/pop"))
    assert pop["models"] == ["KoboldAI/FakeModel-1B"]
    assert pop["bridge_agent"] == "KoboldAI Cluster Bridge:1.0.0:unknown"
    assert all("password" not in body for _, _, body in scripted_cluster.requests)


def test_horde_protocol_with_the_anonymous_key_is_one_clear_line(run_bridge, scripted_cluster):
    bridge = run_bridge("--protocol", "horde", "--apikey", "0000000000")
    assert bridge.wait() == 1
    assert len(error_lines(bridge)) == 1
    assert bridge.lines[-1].endswith(
        "the cluster does not let the anonymous user run servers (Anonymous user is forbidden.): "
        "set --apikey to an API key of your account (0000000000 is the anonymous key)"
    )


def test_horde_protocol_without_a_key_is_a_config_error(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "--name", "s", "--protocol", "horde"],
        cwd=tmp_path,
        env=bridge_env(BRIDGE_USERNAME="bob", BRIDGE_PASSWORD="pw"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("bridge: error: --protocol horde needs an API key")
    assert result.stderr.count("\n") == 1
