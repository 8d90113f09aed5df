"""The AI Horde v2 protocol against the scripted cluster, answering as research/horde-v2-text-api.md
§2.3 and §2.4 say (the honest double's v2 routes, or scripted answers for the rarer cases)."""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from bridge import BRIDGE_AGENT
from bridge.cluster import (
    PROTOCOLS,
    Capabilities,
    ClusterRejected,
    ClusterUnavailable,
    HordeProtocol,
    Job,
    NotACluster,
    NoWork,
    Submitted,
)
from bridge.config import Config
from bridge.options import PROTOCOL_NAMES
from bridge.tests.cluster_double import V2_EMPTY_PAYLOAD, V2_POP, V2_SUBMIT, ScriptedCluster

CAPS = Capabilities("KoboldAI/OPT-13B-Erebus", 80, 1024)
KEY = "kq3J0fQxWm6f3nB1x0dCZg"
JOB_ID = "5b7f0c2e-8d37-4a57-9a0e-3c8f3f1d2a11"
OTHER_ID = "9a0e51c3-1111-4aaa-8bbb-222222222222"


@pytest.fixture
def cluster() -> Iterator[ScriptedCluster]:
    server = ScriptedCluster().start()
    yield server
    server.stop()


def client(url: str, **kwargs: Any) -> HordeProtocol:
    kwargs.setdefault("apikey", KEY)
    return HordeProtocol(url, name="bob-1", bridge_agent="agent:1:unknown", **kwargs)


def error(message: str, rc: str, **extra: Any) -> dict[str, Any]:
    return {"message": message, "rc": rc, **extra}


def pop_answer(**fields: Any) -> dict[str, Any]:
    """A v2 pop answer with every key, as the horde sends it; `fields` override."""
    answer = {
        "payload": dict(V2_EMPTY_PAYLOAD),
        "id": None,
        "ids": [],
        "messages": [],
        "ttl": None,
        "extra_source_images": None,
        "skipped": {},
        "softprompt": None,
        "model": None,
    }
    return {**answer, **fields}


def with_job(job_id: str = JOB_ID, **fields: Any) -> dict[str, Any]:
    payload = {**V2_EMPTY_PAYLOAD, "prompt": "Hi", "n": 1, "max_length": 20}
    job = {"payload": payload, "id": job_id, "ids": [job_id], "ttl": 150, "model": CAPS.model}
    return pop_answer(**{**job, **fields})


def sent(cluster: ScriptedCluster, path: str) -> list[dict[str, Any]]:
    return [body for request_path, _, body in cluster.requests if request_path == path]


def test_pop_sends_the_v2_fields_with_the_key_in_a_header(cluster):
    # A trailing slash must not turn the path into //api/v2/...: the double would answer 404.
    answer = client(cluster.url + "/", threads=3).pop(CAPS)
    assert answer == NoWork(skipped={})
    [(path, headers, body)] = cluster.requests
    assert path == "/api/v2/generate/text/pop"
    assert headers["apikey"] == KEY
    assert body == {
        "name": "bob-1",
        "models": ["KoboldAI/OPT-13B-Erebus"],
        "max_length": 80,
        "max_context_length": 1024,
        "bridge_agent": "agent:1:unknown",
        "threads": 3,
        "amount": 1,
        "softprompts": [],
        "nsfw": True,
    }


def test_pop_returns_the_job_the_double_hands_out(cluster):
    cluster.add_job(JOB_ID, "Once upon a time", ttl=150, max_length=20)
    job = client(cluster.url).pop(CAPS)
    assert isinstance(job, Job)
    assert (job.id, job.ttl) == (JOB_ID, 150)
    assert job.payload["prompt"] == "Once upon a time"
    assert job.payload["max_length"] == 20
    # Stamped by the worker on its clock, not here: no deadline until then.
    assert (job.ttl, job.received, job.deadline) == (150, None, None)


def test_skipped_is_reported_when_there_is_no_work(cluster):
    cluster.answers.append((200, pop_answer(skipped={"max_context_length": 2})))
    assert client(cluster.url).pop(CAPS) == NoWork(skipped={"max_context_length": 2})


def test_a_paused_servers_reason_is_read(cluster):
    cluster.answers.append((200, {**pop_answer(skipped={}), "paused_reason": "too fast"}))
    assert client(cluster.url).pop(CAPS) == NoWork(paused="too fast")


def test_a_job_given_only_in_ids_is_served(cluster):
    # horde-sdk's workers read only `ids`: a cluster may fill that alone.
    answer = with_job()
    del answer["id"]
    cluster.answers.append((200, answer))
    assert client(cluster.url).pop(CAPS).id == JOB_ID


@pytest.mark.parametrize("ttl", [None, 0, "150", True])
def test_a_job_without_a_usable_ttl_has_no_deadline(cluster, ttl):
    cluster.answers.append((200, with_job(ttl=ttl)))
    assert client(cluster.url).pop(CAPS).deadline is None


def test_extra_jobs_beyond_the_one_asked_for_are_given_back(cluster, caplog):
    cluster.answers.append((200, with_job(ids=[JOB_ID, OTHER_ID])))
    job = client(cluster.url).pop(CAPS)
    assert job.id == JOB_ID
    assert cluster.faulted == [OTHER_ID]
    assert sent(cluster, V2_SUBMIT) == [{"id": OTHER_ID, "generation": "", "state": "faulted"}]
    assert "the cluster sent 2 jobs for one pop; giving back the others" in caplog.text


def test_a_job_for_another_model_is_given_back(cluster, caplog):
    cluster.answers.append((200, with_job(model="Some/Other-Model")))
    assert client(cluster.url).pop(CAPS) == NoWork()
    assert cluster.faulted == [JOB_ID]
    assert "asks for model Some/Other-Model, but KoboldAI serves KoboldAI/OPT-13B" in caplog.text


def test_a_job_without_payload_is_given_back_and_retried_later(cluster):
    cluster.answers.append((200, with_job(payload=None)))
    with pytest.raises(ClusterUnavailable, match="the cluster sent a job without a payload"):
        client(cluster.url).pop(CAPS)
    assert cluster.faulted == [JOB_ID]


def test_moderator_messages_are_logged_once_each(cluster, caplog):
    caplog.set_level(logging.INFO, logger="bridge")
    first = {"id": "m1", "message": "Please update\nyour bridge.", "origin": "db0#1", "expiry": ""}
    cluster.messages.append(first)
    protocol = client(cluster.url)
    protocol.pop(CAPS)
    protocol.pop(CAPS)
    cluster.messages.append({"id": "m2", "message": "Thanks!"})
    cluster.add_job(JOB_ID, "Hi")
    protocol.pop(CAPS)
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "message from db0#1 to this server: Please update your bridge.",
        "message to this server: Thanks!",
    ]


def test_maintenance_is_no_work_with_the_message(cluster):
    cluster.answers.append((403, error("Paused by a moderator.", "WorkerMaintenance")))
    assert client(cluster.url).pop(CAPS) == NoWork(maintenance="Paused by a moderator.")


@pytest.mark.parametrize(
    ("key", "status", "body", "expected"),
    [
        (
            KEY,
            401,
            error("No user matching sent API Key.", "InvalidAPIKey"),
            "the cluster rejected the credentials: No user matching sent API Key.",
        ),
        (
            KEY,
            403,
            error("Wrong credentials to submit as this worker.", "WrongCredentials"),
            "the cluster rejected the credentials: Wrong credentials to submit as this worker.",
        ),
        (
            "0000000000",
            403,
            error(
                "Anonymous user is forbidden from performing this operation", "AnonForbiddenWorker"
            ),
            "the cluster does not let the anonymous user run servers (Anonymous user is forbidden "
            "from performing this operation): set --apikey to an API key of your account "
            "(0000000000 is the anonymous key)",
        ),
        (
            KEY,
            400,
            {"message": "Input payload validation failed", "errors": {"threads": "51 is too big"}},
            "the cluster refused this server: Input payload validation failed "
            "(threads: 51 is too big)",
        ),
        (
            KEY,
            400,
            error("This worker name is not allowed.", "BadRequest"),
            "the cluster refused this server: This worker name is not allowed.",
        ),
        (
            KEY,
            404,
            b"<html>Not Found</html>",
            "is not an AI Horde-compatible cluster (POST /api/v2/generate/text/pop answered "
            "404); check --cluster-url",
        ),
        (
            KEY,
            200,
            b"<html>Welcome to nginx!</html>",
            "is not an AI Horde-compatible cluster (POST /api/v2/generate/text/pop answered 200)",
        ),
    ],
)
def test_pop_refusals_are_fatal_with_one_line(cluster, key, status, body, expected):
    cluster.answers.append((status, body))
    with pytest.raises(ClusterRejected) as caught:
        client(cluster.url, apikey=key).pop(CAPS)
    assert expected in str(caught.value)
    assert "\n" not in str(caught.value)


def test_anonymous_refusal_names_the_key_only_when_it_is_the_anonymous_one(cluster):
    cluster.answers.append((403, error("Anonymous user is forbidden.", "AnonForbiddenWorker")))
    with pytest.raises(ClusterRejected) as caught:
        client(cluster.url).pop(CAPS)
    assert str(caught.value).endswith("set --apikey to an API key of your account")


def test_the_anonymous_key_is_refused_by_the_double_as_by_a_horde(cluster):
    with pytest.raises(ClusterRejected, match=re.escape("(0000000000 is the anonymous key)")):
        client(cluster.url, apikey="0000000000").pop(CAPS)


def test_a_url_with_the_api_path_gets_a_hint(cluster):
    with pytest.raises(NotACluster) as caught:
        client(cluster.url + "/api/v2").pop(CAPS)
    assert str(caught.value).endswith(
        "check --cluster-url: give the cluster's address without /api"
    )
    assert cluster.requests[0][0] == "/api/v2/api/v2/generate/text/pop"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, "answered 500"),
        (502, "answered 502"),
        (429, "the cluster asks this server to slow down (429)"),
    ],
)
def test_pop_transient_failures(cluster, status, expected):
    # The horde's rate limiter answers 429 with a message and no rc.
    cluster.answers.append((status, {"message": "60 per 1 second"}))
    with pytest.raises(ClusterUnavailable, match=re.escape(expected)):
        client(cluster.url).pop(CAPS)


def test_unreachable_cluster():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(ClusterUnavailable) as caught:
        client(url).pop(CAPS)
    assert str(caught.value) == f"cannot reach the cluster at {url} (connection refused)"


def test_submit_sends_the_text_as_ok_and_reads_a_float_reward(cluster):
    cluster.answers.append((200, {"reward": 3.4}))
    result = client(cluster.url).submit(Job(JOB_ID, {}, 150), " a text")
    # The reward is kudos: kept apart from the token count, which the worker takes from the text.
    assert result == Submitted("accepted", reward=None, kudos=3.4)
    [(path, headers, body)] = cluster.requests
    assert (path, headers["apikey"]) == (V2_SUBMIT, KEY)
    assert body == {"id": JOB_ID, "generation": " a text", "state": "ok"}


def test_the_honest_double_pays_once_and_then_says_already_submitted(cluster):
    cluster.add_job(JOB_ID, "Hi")
    protocol = client(cluster.url)
    job = protocol.pop(CAPS)
    assert protocol.submit(job, "sixteen letters.") == Submitted("accepted", kudos=4.0)
    again = protocol.submit(job, "sixteen letters.")
    assert again == Submitted(
        "duplicate", message=f"Processing Generation with ID {JOB_ID} already submitted."
    )
    assert cluster.submitted[JOB_ID]["generation"] == "sixteen letters."


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"reward": 12}, Submitted("accepted", kudos=12.0)),
        (200, {"reward": True}, Submitted("accepted")),
        (200, {}, Submitted("accepted")),
        (
            400,
            error("Processing Generation with ID x already submitted.", "DuplicateGen"),
            Submitted("duplicate", message="Processing Generation with ID x already submitted."),
        ),
        (
            404,
            error("Processing Generation with ID x does not exist.", "InvalidJobID"),
            Submitted("expired", message="Processing Generation with ID x does not exist."),
        ),
        (
            400,
            error("This generation was aborted after 150 seconds.", "AbortedGen"),
            Submitted("expired", message="This generation was aborted after 150 seconds."),
        ),
        (
            400,
            {"message": "Input payload validation failed", "errors": {"seed": "bad"}},
            Submitted("refused", message="Input payload validation failed (400)"),
        ),
    ],
)
def test_submit_outcomes(cluster, status, body, expected):
    cluster.answers.append((status, body))
    assert client(cluster.url).submit(Job(JOB_ID, {}, 150), "x") == expected
    # One request each: an aborted job is never resubmitted (the legacy bridge looped forever).
    assert len(cluster.requests) == 1


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, error("No user matching sent API Key.", "InvalidAPIKey"), "rejected the credentials"),
        (403, error("Wrong credentials.", "WrongCredentials"), "rejected the credentials"),
        (403, error("This user is being deleted.", "DeletedUser"), "refused this server"),
    ],
)
def test_submit_refusals_of_this_server_are_fatal(cluster, status, body, expected):
    cluster.answers.append((status, body))
    with pytest.raises(ClusterRejected, match=expected):
        client(cluster.url).submit(Job(JOB_ID, {}, 150), "x")


@pytest.mark.parametrize("status", [429, 500, 503])
def test_submit_transient_failure(cluster, status):
    cluster.answers.append((status, b"busy"))
    with pytest.raises(ClusterUnavailable):
        client(cluster.url).submit(Job(JOB_ID, {}, 150), "x")


def test_give_back_reports_the_job_faulted(cluster):
    result = client(cluster.url).give_back(Job(JOB_ID, {}, 150))
    assert result == Submitted("accepted", kudos=0.0)
    assert cluster.faulted == [JOB_ID]
    assert sent(cluster, V2_SUBMIT) == [{"id": JOB_ID, "generation": "", "state": "faulted"}]
    assert sent(cluster, V2_POP) == []


def test_protocols_are_registered_under_the_option_values():
    assert tuple(PROTOCOLS) == PROTOCOL_NAMES


def test_built_from_the_config():
    config = Config(cluster_url="https://aihorde.net", protocol="horde", name="n", apikey=KEY)
    protocol = PROTOCOLS["horde"].from_config(config, bridge_agent=BRIDGE_AGENT)
    assert isinstance(protocol, HordeProtocol)
    assert (protocol.url, protocol.apikey, protocol.name) == ("https://aihorde.net", KEY, "n")
    with pytest.raises(ValueError, match="needs an API key"):
        PROTOCOLS["horde"].from_config(Config(name="n"), bridge_agent=BRIDGE_AGENT)
