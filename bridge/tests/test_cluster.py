"""The original cluster protocol against a scripted server answering as the contract says."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from bridge.cluster import (
    Capabilities,
    ClusterRejected,
    ClusterUnavailable,
    Job,
    NoWork,
    OriginalClusterProtocol,
    Submitted,
)
from bridge.tests.cluster_double import ScriptedCluster

CAPS = Capabilities("KoboldAI/OPT-13B-Erebus", 80, 1024)
JOB_ID = "5b7f0c2e-8d37-4a57-9a0e-3c8f3f1d2a11"


@pytest.fixture
def cluster() -> Iterator[ScriptedCluster]:
    server = ScriptedCluster().start()
    yield server
    server.stop()


def client(url: str, **kwargs: Any) -> OriginalClusterProtocol:
    kwargs.setdefault("username", "bob")
    kwargs.setdefault("password", "pw")
    return OriginalClusterProtocol(url, name="bob-1", bridge_agent="agent:1:x", **kwargs)


def error(message: str, rc: str, **extra: Any) -> dict[str, Any]:
    return {"message": message, "rc": rc, **extra}


def test_pop_sends_the_contracts_fields(cluster):
    cluster.answers.append((200, {"id": None, "skipped": {"max_length": 2}}))
    answer = client(cluster.url + "/", threads=3).pop(CAPS)
    assert answer == NoWork(skipped={"max_length": 2})
    path, headers, body = cluster.requests[0]
    assert path == "/generate/pop"
    assert "apikey" not in {key.lower() for key in headers}
    assert body == {
        "username": "bob",
        "password": "pw",
        "name": "bob-1",
        "model": "KoboldAI/OPT-13B-Erebus",
        "max_length": 80,
        "max_content_length": 1024,
        "bridge_agent": "agent:1:x",
        "threads": 3,
    }


def test_apikey_goes_in_a_header_and_replaces_the_password(cluster):
    cluster.answers.extend([(200, {"id": None, "skipped": {}}), (200, {"reward": 3})])
    protocol = client(cluster.url, username=None, password=None, apikey="k" * 22)
    protocol.pop(CAPS)
    protocol.submit(Job(JOB_ID, {}, 150), "text")
    for _, headers, body in cluster.requests:
        assert headers["apikey"] == "k" * 22
        assert "password" not in body and "username" not in body


def test_pop_returns_the_job(cluster):
    payload = {"prompt": "Hi", "n": 1, "max_length": 20, "max_context_length": 512}
    cluster.answers.append((200, {"id": JOB_ID, "payload": payload, "ttl": 150}))
    job = client(cluster.url).pop(CAPS)
    assert isinstance(job, Job)
    assert (job.id, job.payload, job.ttl) == (JOB_ID, payload, 150)
    # Stamped by the worker on its clock, not here: no deadline until then.
    assert (job.ttl, job.received, job.deadline) == (150, None, None)


def test_a_job_without_ttl_has_no_deadline(cluster):
    cluster.answers.append((200, {"id": JOB_ID, "payload": {"prompt": "Hi"}}))
    assert client(cluster.url).pop(CAPS).deadline is None


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            401,
            error("Wrong password for user 'bob'.", "InvalidCredentials"),
            "the cluster rejected the credentials: Wrong password for user 'bob'.",
        ),
        (
            403,
            error("The server name bob-1 belongs to another account.", "WrongCredentials"),
            "the cluster rejected the credentials: "
            "The server name bob-1 belongs to another account.",
        ),
        (
            403,
            error("Invalid API key.", "InvalidAPIKey"),
            "the cluster rejected the credentials: Invalid API key.",
        ),
        (
            403,
            error("Anonymous users cannot run servers.", "AnonForbiddenWorker"),
            "the cluster does not let anonymous users run servers (Anonymous users cannot run "
            "servers.): set --username and --password, or --apikey",
        ),
        (
            400,
            error("Invalid input.", "ValidationError", errors={"name": "Too long."}),
            "the cluster refused this server: Invalid input. (name: Too long.)",
        ),
        (
            404,
            b"<html>Not Found</html>",
            "is not a KoboldAI Cluster (POST /generate/pop answered 404); check --cluster-url",
        ),
        (
            200,
            b"<html>Welcome to nginx!</html>",
            "is not a KoboldAI Cluster (POST /generate/pop answered 200)",
        ),
    ],
)
def test_pop_refusals_are_fatal_with_one_line(cluster, status, body, expected):
    cluster.answers.append((status, body))
    with pytest.raises(ClusterRejected) as caught:
        client(cluster.url).pop(CAPS)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_maintenance_is_no_work_with_the_message(cluster):
    cluster.answers.append((403, error("Paused by a moderator.", "WorkerMaintenance")))
    assert client(cluster.url).pop(CAPS) == NoWork(maintenance="Paused by a moderator.")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, "answered 500"),
        (502, "answered 502"),
        (429, "the cluster asks this server to slow down (429)"),
    ],
)
def test_pop_transient_failures(cluster, status, expected):
    cluster.answers.append((status, b"oops"))
    with pytest.raises(ClusterUnavailable, match=re.escape(expected)):
        client(cluster.url).pop(CAPS)


def test_unreachable_cluster():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(ClusterUnavailable) as caught:
        client(url).pop(CAPS)
    assert str(caught.value) == f"cannot reach the cluster at {url} (connection refused)"


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"reward": 12}, Submitted("accepted", 12)),
        (
            400,
            error("This job was already submitted.", "DuplicateGen"),
            Submitted("duplicate", message="This job was already submitted."),
        ),
        (
            404,
            error("Job not found or expired.", "JobNotFound"),
            Submitted("expired", message="Job not found or expired."),
        ),
        (
            400,
            error("Too late.", "AbortedGen"),
            Submitted("refused", message="Too late. (400)"),
        ),
    ],
)
def test_submit_outcomes(cluster, status, body, expected):
    cluster.answers.append((status, body))
    assert client(cluster.url).submit(Job(JOB_ID, {}, 150), " a text") == expected
    path, _, sent = cluster.requests[0]
    assert (path, sent) == (
        "/generate/submit",
        {"id": JOB_ID, "password": "pw", "generation": " a text"},
    )


def test_submit_with_wrong_password_is_fatal(cluster):
    cluster.answers.append((401, error("Wrong password.", "InvalidCredentials")))
    with pytest.raises(ClusterRejected, match="the cluster rejected the credentials: Wrong pass"):
        client(cluster.url).submit(Job(JOB_ID, {}, 150), "x")


def test_submit_transient_failure(cluster):
    cluster.answers.append((503, b"busy"))
    with pytest.raises(ClusterUnavailable):
        client(cluster.url).submit(Job(JOB_ID, {}, 150), "x")


def test_give_back_reports_the_job_faulted(cluster):
    cluster.answers.append((200, {"reward": 0}))
    assert client(cluster.url).give_back(Job(JOB_ID, {}, 150)) == Submitted("accepted", 0)
    assert cluster.requests[0][2] == {
        "id": JOB_ID,
        "password": "pw",
        "generation": "",
        "state": "faulted",
    }


def test_submit_sends_the_prompts_counts_when_known(cluster):
    from bridge.fitting import PromptFit

    cluster.answers.append((200, {"reward": 3}))
    client(cluster.url).submit(Job(JOB_ID, {}, 150), " a text", 3, PromptFit(500, 1200))
    assert cluster.requests[0][2] == {
        "id": JOB_ID,
        "password": "pw",
        "generation": " a text",
        "token_count": 3,
        "prompt_tokens": 500,
        "prompt_trimmed": 1200,
    }


def test_leaving_is_one_pop_that_says_so_and_a_job_it_brings_goes_back(cluster):
    # A cluster that ignores "leaving" may hand out a job: it is given back at once.
    cluster.answers.append((200, {"id": JOB_ID, "payload": {"prompt": "x"}, "ttl": 150}))
    cluster.answers.append((200, {"reward": 0}))
    assert client(cluster.url).leave(CAPS) is True
    (pop_path, _, pop), (submit_path, _, give_back) = cluster.requests
    assert (pop_path, pop["leaving"], pop["name"], "wait" in pop) == (
        "/generate/pop",
        True,
        "bob-1",
        False,
    )
    assert (submit_path, give_back["state"]) == ("/generate/submit", "faulted")


def test_leaving_never_raises():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert client(f"http://127.0.0.1:{port}").leave(CAPS) is False
