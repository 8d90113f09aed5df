"""End to end: a volunteer drops out (issue 25).

A job whose server heartbeated and then went quiet is given back by the client's own wait,
without the reaper (not running here) and long before its ttl: driven over the API, and
with the project's bridge killed with SIGKILL mid-job.

A retried create with the same Idempotency-Key waits for the same prompt on every waiting
face.

A stream whose job goes to another server is continued, never garbled.
Two servers of the same model, driven over the API by the test: the first streams some
text, then gives its job back (or goes quiet); the second gets the prompt followed by that
text and the remaining length, and its text is appended: the client's stream has the first
server's text, then the second's, and ends normally; the stored generation is the joined
text, and the ledger paid each server for its part.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from accounts.keys import account_register

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return {"KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS": "30", "KOBOLDCLUSTER_STALL_SECONDS": "2"}


class Volunteer:
    """Two servers of one account, both serving `tiny`, driven over the original API."""

    def __init__(self, url: str) -> None:
        self.url = url
        _, self.key = account_register(username="volunteer")

    def post(self, path: str, **body: Any) -> requests.Response:
        return requests.post(f"{self.url}{path}", json=body, headers={"apikey": self.key})

    def pop(self, name: str, wait: int = 0) -> dict[str, Any]:
        answer = self.post("/generate/pop", name=name, model="tiny", max_length=64, wait=wait)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def pop_job(self, name: str) -> dict[str, Any]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            job = self.pop(name, wait=1)
            if job["id"]:
                return job
        raise AssertionError(f"{name} found no job")

    def progress(self, job: dict[str, Any], text: str) -> requests.Response:
        return self.post("/generate/progress", id=job["id"], text=text)

    def progress_heartbeat(self, job: dict[str, Any]) -> requests.Response:
        return self.post("/generate/progress", id=job["id"])


class Stream:
    """A client reading a stream in a thread: its lines as they come."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(url, body), daemon=True)
        self.thread.start()

    def _read(self, url: str, body: dict[str, Any]) -> None:
        with requests.post(url, json=body, stream=True, timeout=60) as answer:
            assert answer.status_code == 200
            for line in answer.iter_lines(decode_unicode=True):
                self.lines.append(line)

    def data(self) -> list[str]:
        return [line[6:] for line in list(self.lines) if line.startswith("data: ")]

    def wait_for(self, check: Any, what: str) -> None:
        deadline = time.monotonic() + 15
        while not check(self.data()):
            assert time.monotonic() < deadline, f"{what}: {self.lines}"
            time.sleep(0.05)

    def end(self) -> list[str]:
        self.thread.join(30)
        assert not self.thread.is_alive(), self.lines
        return self.data()


def replace_the_server(
    volunteer: Volunteer, url: str, body: dict, text_of: Any, how: str = "faulted"
) -> Stream:
    """Server a streams " w1 w2" and gives its job back (`faulted`), or goes quiet
    (`stalled`: the stream's own wait gives it back); server b continues it."""
    volunteer.pop("a")  # both online before the prompt comes (else it is refused at once)
    volunteer.pop("b")
    stream = Stream(url, body)
    first = volunteer.pop_job("a")
    assert volunteer.progress(first, " w1 w2").json() == {"ok": True}
    stream.wait_for(lambda data: text_of(data) == " w1 w2", "the first server's text")
    if how == "faulted":
        given = volunteer.post("/generate/submit", id=first["id"], generation="", state="faulted")
        assert given.status_code == 200, given.text
    second = volunteer.pop_job("b")
    # The prompt followed by the kept text, and what is left of max_length (8 less the
    # 2 tokens of " w1 w2" by the cluster's count: a quarter of its characters).
    assert second["payload"]["prompt"] == "Once w1 w2", second
    assert second["payload"]["max_length"] == 6, second
    volunteer.progress(second, " v1")
    stream.wait_for(lambda data: text_of(data) == " w1 w2 v1", "the second server's text")
    volunteer.post("/generate/submit", id=second["id"], generation=" v1 v2")
    stream.wait_for(lambda data: data and data[-1].startswith(("[DONE]", '{"token": ""')), "end")
    return stream


def assert_joined_and_paid_fairly() -> None:
    """The stored generation is the joined text; a was paid for its kept text, b for its part."""
    from accounts.models import LedgerEntry
    from generations.models import Job

    jobs = {job.server.name: job for job in Job.objects.select_related("server")}
    assert jobs["a"].state in (Job.State.FAULTED, Job.State.ABANDONED)
    assert (jobs["a"].text, jobs["a"].tokens) == (" w1 w2", 2)
    assert (jobs["b"].state, jobs["b"].text) == (Job.State.DONE, " w1 w2 v1 v2")
    assert (jobs["b"].carried_tokens, jobs["b"].tokens) == (2, 2)
    paid = {
        (entry.kind, entry.job_id): entry.tokens
        for entry in LedgerEntry.objects.filter(job_id__isnull=False)
    }
    assert paid == {
        ("usage", jobs["a"].id): 2,
        ("contribution", jobs["a"].id): 2,
        ("usage", jobs["b"].id): 2,
        ("contribution", jobs["b"].id): 2,
    }


@pytest.mark.parametrize("how", ["faulted", "stalled"])
def test_an_openai_stream_whose_server_is_replaced_is_continued(cluster, how):
    volunteer = Volunteer(cluster.url)
    body = {"model": "tiny", "prompt": "Once", "max_tokens": 8, "stream": True}

    def text_of(data: list[str]) -> str:
        chunks = [json.loads(d) for d in data if d != "[DONE]"]
        return "".join(c["choices"][0]["text"] for c in chunks if c.get("choices"))

    stream = replace_the_server(volunteer, f"{cluster.url}/v1/completions", body, text_of, how)
    data = stream.end()

    assert text_of(data) == " w1 w2 v1 v2"
    assert data[-1] == "[DONE]"
    assert json.loads(data[-2])["choices"][0]["finish_reason"] == "stop"
    assert_joined_and_paid_fairly()


def test_a_koboldcpp_stream_whose_server_is_replaced_is_continued(cluster):
    volunteer = Volunteer(cluster.url)
    body = {"prompt": "Once", "max_length": 8}

    def text_of(data: list[str]) -> str:
        return "".join(json.loads(d)["token"] for d in data)

    url = f"{cluster.url}/api/extra/generate/stream"
    data = replace_the_server(volunteer, url, body, text_of).end()

    assert text_of(data) == " w1 w2 v1 v2"
    assert json.loads(data[-1])["finish_reason"] == "stop"
    assert_joined_and_paid_fairly()


def test_a_waiting_client_gets_the_next_servers_answer_when_the_first_stalls(cluster):
    volunteer = Volunteer(cluster.url)
    volunteer.pop("a")
    volunteer.pop("b")
    answers: list[requests.Response] = []
    body = {"prompt": "Once", "max_length": 8}
    url = f"{cluster.url}/api/v1/generate"
    client = threading.Thread(target=lambda: answers.append(requests.post(url, json=body)))
    client.start()
    first = volunteer.pop_job("a")
    assert volunteer.progress_heartbeat(first).json() == {"ok": True}  # then a goes quiet

    second = volunteer.pop_job("b")  # the ttl is 150 s: only the stall gives it back
    submitted = volunteer.post("/generate/submit", id=second["id"], generation=" from b")
    client.join(30)

    assert submitted.status_code == 200, submitted.text
    assert answers[0].json() == {"results": [{"text": " from b"}]}
    late = volunteer.post("/generate/submit", id=first["id"], generation=" from a")
    assert (late.status_code, late.json()["rc"]) == (404, "AbortedGen")


def test_a_waiting_client_gets_the_joined_text_and_the_names_of_both_servers(cluster):
    """A KoboldAI client waiting (not streaming) for a generation whose first server
    stalled after some text: its answer is the joined text, and says who produced it."""
    volunteer = Volunteer(cluster.url)
    volunteer.pop("a")
    volunteer.pop("b")
    answers: list[requests.Response] = []
    body = {"prompt": "Once", "max_length": 8}
    url = f"{cluster.url}/api/v1/generate"
    client = threading.Thread(target=lambda: answers.append(requests.post(url, json=body)))
    client.start()
    first = volunteer.pop_job("a")
    assert volunteer.progress(first, " w1").json() == {"ok": True}  # then a goes quiet

    second = volunteer.pop_job("b")
    assert second["payload"]["prompt"] == "Once w1"
    volunteer.post("/generate/submit", id=second["id"], generation=" from b")
    client.join(30)

    assert answers[0].json() == {"results": [{"text": " w1 from b"}]}
    assert answers[0].headers["X-KoboldCluster-Servers"] == "a, b"


WAITING_FACES = [
    ("/api/v1/generate", {"prompt": "Once", "max_length": 8}),
    ("/api/extra/generate/stream", {"prompt": "Once", "max_length": 8}),
    ("/v1/completions", {"model": "tiny", "prompt": "Once", "max_tokens": 8}),
    (
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8},
    ),
]


@pytest.mark.parametrize(("path", "body"), WAITING_FACES)
def test_a_retried_create_with_the_same_key_waits_for_the_same_prompt(cluster, path, body):
    from generations.models import Prompt

    volunteer = Volunteer(cluster.url)
    volunteer.pop("a")
    answers: list[requests.Response] = []
    url, headers = f"{cluster.url}{path}", {"Idempotency-Key": "retry-7"}

    def ask() -> None:
        answers.append(requests.post(url, json=body, headers=headers, timeout=30))

    clients = [threading.Thread(target=ask) for _ in range(2)]
    clients[0].start()
    job = volunteer.pop_job("a")
    clients[1].start()  # the retry, most likely while the first still waits
    time.sleep(0.5)  # (arriving after the submit, it gets the same prompt, done, as well)
    submitted = volunteer.post("/generate/submit", id=job["id"], generation=" the end")
    for client in clients:
        client.join(30)

    assert submitted.status_code == 200, submitted.text
    assert Prompt.objects.count() == 1
    assert [answer.status_code for answer in answers] == [200, 200]
    assert all("the end" in answer.text for answer in answers), [a.text for a in answers]


def test_a_killed_bridges_job_goes_to_another_server_after_the_stall_time(cluster, bridge_process):
    """The project's bridge heartbeats while its backend (not streaming, 60 s a job)
    generates; kill -9 it and the waiting client's request goes to the next server once
    KOBOLDCLUSTER_STALL_SECONDS (2 here) have passed, long before the job's ttl (150 s)."""
    from bridge.tests.kai_double import FakeKoboldAI
    from generations.liveness import last_signs
    from generations.models import Job

    volunteer = Volunteer(cluster.url)
    with FakeKoboldAI(delay=60) as kai:
        bridge = bridge_process(
            *("--cluster-url", cluster.url, "--backend-url", kai.url, "--name", "bob-gpu"),
            *("--username", "bob", "--password", "s3cret-pass"),
        )
        volunteer.pop("b")
        bridge.wait_until(lambda: bob_online(cluster), "bob-gpu to check in")
        answers: list[requests.Response] = []
        body = {"prompt": "Once", "max_length": 8}
        url = f"{cluster.url}/api/v1/generate"
        client = threading.Thread(target=lambda: answers.append(requests.post(url, json=body)))
        client.start()
        bridge.wait_until(lambda: heartbeated(last_signs), "a heartbeat of bob-gpu's job")
        bridge.popen.kill()
        killed = time.monotonic()

        second = volunteer.pop_job("b")
        print(f"\nkill -9 to the next server's pop: {time.monotonic() - killed:.1f} s")
        volunteer.post("/generate/submit", id=second["id"], generation=" from b")
        client.join(30)

    assert answers[0].json() == {"results": [{"text": " from b"}]}
    states = dict(Job.objects.values_list("server__name", "state"))
    assert states == {"bob-gpu": Job.State.ABANDONED, "b": Job.State.DONE}


def bob_online(cluster: Any) -> bool:
    return any(s["name"] == "bob-gpu" for s in requests.get(f"{cluster.url}/servers").json())


def heartbeated(last_signs: Any) -> bool:
    from generations.models import Job

    jobs = list(Job.objects.filter(server__name="bob-gpu").values_list("id", flat=True))
    return bool(jobs and last_signs(jobs))


@pytest.fixture(params=["files", "redis"])
def two_nodes(request: Any, transactional_db: None) -> Iterator[tuple[Any, ...]]:
    from koboldcluster.testing import ClusterProcess, redis_env, started

    env = {"KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS": "30", "KOBOLDCLUSTER_STALL_SECONDS": "2"}
    if request.param == "redis":
        env |= redis_env()
    with started(ClusterProcess(env), ClusterProcess(env)) as nodes:
        yield nodes


def test_a_heartbeat_to_one_node_is_seen_by_a_wait_on_the_other(two_nodes):
    """Signs of life are shared like progress (Redis, or the var dir of one machine): the
    wait on node B gives back the job whose server heartbeated to node A, then went quiet."""
    node_a, node_b = two_nodes
    volunteer = Volunteer(node_a.url)
    volunteer.pop("a")
    volunteer.pop("b")
    answers: list[requests.Response] = []
    url, body = f"{node_b.url}/api/v1/generate", {"prompt": "Once", "max_length": 8}
    client = threading.Thread(target=lambda: answers.append(requests.post(url, json=body)))
    client.start()
    first = volunteer.pop_job("a")
    assert volunteer.progress_heartbeat(first).json() == {"ok": True}

    second = volunteer.pop_job("b")
    volunteer.post("/generate/submit", id=second["id"], generation=" from b")
    client.join(30)

    assert answers[0].json() == {"results": [{"text": " from b"}]}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/generate/prompt", {"prompt": "Once", "params": {"max_length": 8}}),
        ("/api/v2/generate/text/async", {"prompt": "Once", "params": {"max_length": 16}}),
    ],
)
def test_a_retried_create_gets_the_first_id_through_the_direct_lane(cluster, path, body):
    """The original and v2 creates are answered by the direct lane under ASGI
    (koboldcluster/direct.py): it reads the header from the same request."""
    from generations.models import Prompt

    headers = {"Idempotency-Key": "retry-9"}
    first = requests.post(f"{cluster.url}{path}", json=body, headers=headers)
    assert first.status_code in (200, 202), first.text
    ids = {first.json()["id"]}
    ids.add(requests.post(f"{cluster.url}{path}", json=body, headers=headers).json()["id"])

    assert len(ids) == 1 and Prompt.objects.count() == 1
