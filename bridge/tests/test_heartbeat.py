"""Heartbeats (issue 25, the bridge's side): while a job generates, the bridge tells the
cluster it is still at work (a streamed job: when its text posts pause), so that a cluster
can tell a stall in seconds.
The cluster is a recording double here (the real one: generations/tests/test_stall.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from bridge.cluster import HordeProtocol, Job, OriginalClusterProtocol
from bridge.heartbeat import Heartbeat, heartbeat_for
from bridge.tests.cluster_double import V2_PROGRESS, ScriptedCluster
from bridge.tests.processes import wait_until

JOB = Job("5b7f0c2e-8d37-4a57-9a0e-3c8f3f1d2a11", {"prompt": "Hi"}, 150)


class RecordingClusterDouble:
    """Answers every progress post with `outcome` and records it."""

    takes_progress = True

    def __init__(self, outcome: str = "ok") -> None:
        self.outcome = outcome
        self.posts: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()

    def progress(self, job: Job, text: str | None) -> str:
        with self.lock:
            self.posts.append((job.id, text))
        return self.outcome


def test_heartbeats_go_at_once_then_at_each_interval_until_closed():
    cluster = RecordingClusterDouble()
    heartbeat = Heartbeat(cluster, JOB, interval=0.02)
    wait_until(lambda: len(cluster.posts) >= 3, "three heartbeats")
    heartbeat.close()
    heartbeat._thread.join(5)

    assert not heartbeat._thread.is_alive()
    assert set(cluster.posts) == {(JOB.id, None)}  # never any text
    assert heartbeat.sent == len(cluster.posts)


@pytest.mark.parametrize("outcome", ["gone", "unsupported"])
def test_heartbeats_stop_when_the_cluster_does_not_want_them(outcome):
    cluster = RecordingClusterDouble(outcome)
    heartbeat = Heartbeat(cluster, JOB, interval=0.01)
    heartbeat._thread.join(5)

    assert not heartbeat._thread.is_alive()
    assert cluster.posts == [(JOB.id, None)]


class StreamDouble:
    """A job's progress sender as a heartbeat sees it: `busy` posts text between any two
    looks (its count grows on every read); otherwise it has gone quiet."""

    def __init__(self, busy: bool, gone: bool = False) -> None:
        self.busy, self.gone, self._posted = busy, gone, 0

    @property
    def posted(self) -> int:
        self._posted += self.busy
        return self._posted


def test_a_stream_that_keeps_posting_needs_no_heartbeat():
    cluster, stream = RecordingClusterDouble(), StreamDouble(busy=True)
    heartbeat = Heartbeat(cluster, JOB, interval=0.01, stream=stream)
    wait_until(lambda: stream._posted >= 20, "the heartbeat to look at the stream 20 times")
    heartbeat.close()
    heartbeat._thread.join(5)

    assert cluster.posts == [] and heartbeat.sent == 0


def test_a_quiet_stream_gets_heartbeats_after_an_interval():
    cluster = RecordingClusterDouble()
    heartbeat = Heartbeat(cluster, JOB, interval=0.01, stream=StreamDouble(busy=False))
    wait_until(lambda: len(cluster.posts) >= 2, "two heartbeats")
    heartbeat.close()

    assert set(cluster.posts) == {(JOB.id, None)}


def test_no_heartbeat_for_a_stream_the_cluster_no_longer_wants():
    cluster = RecordingClusterDouble()
    heartbeat = Heartbeat(cluster, JOB, interval=0.01, stream=StreamDouble(False, gone=True))
    heartbeat._thread.join(5)

    assert not heartbeat._thread.is_alive() and cluster.posts == []


def test_no_heartbeat_for_a_cluster_that_takes_no_progress():
    cluster = RecordingClusterDouble()
    cluster.takes_progress = False

    assert heartbeat_for(cluster, JOB) is None


@pytest.fixture
def scripted() -> Iterator[ScriptedCluster]:
    server = ScriptedCluster().start()
    yield server
    server.stop()


def test_a_heartbeat_is_a_progress_post_without_text_on_both_protocols(scripted):
    scripted.accept_progress = True
    original = OriginalClusterProtocol(
        scripted.url, name="b", username="bob", password="pw", bridge_agent="a:1:x"
    )
    horde = HordeProtocol(scripted.url, name="b", apikey="key", bridge_agent="a:1:x")

    assert original.progress(JOB, None) == "ok"
    assert horde.progress(JOB, None) == "ok"
    (path1, _, body1), (path2, _, body2) = scripted.requests
    assert (path1, body1) == ("/generate/progress", {"id": JOB.id, "password": "pw"})
    assert (path2, body2) == (V2_PROGRESS, {"id": JOB.id})
