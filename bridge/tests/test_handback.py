"""Handing jobs back with their text so far (issue 25): when the backend fails mid-stream,
and when the bridge is stopped with SIGTERM (the main thread's `Bridge.hand_back`)."""

from __future__ import annotations

import threading
from typing import Any

from bridge.cluster import Job
from bridge.handback import InFlight
from bridge.kobold import Generation, KoboldError
from bridge.tests.test_worker import FakeCluster, FakeKobold, Harness, job, real_bridge, wait_until


class StreamingCluster(FakeCluster):
    takes_progress = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progressed: list[str | None] = []

    def progress(self, job: Job, text: str | None) -> str:
        self.progressed.append(text)
        return "ok"


class StreamingKobold(FakeKobold):
    """Streams "partial text", then fails (`fail`) or waits until told to stop."""

    streams = True

    def __init__(self, *, fail: bool) -> None:
        super().__init__()
        self.fail = fail
        self.streaming = threading.Event()

    def generate(self, payload: dict, timeout: float | None = None, on_text: Any = None) -> Any:
        self.generated.append(payload)
        assert on_text is not None
        on_text("partial text")
        self.streaming.set()
        if self.fail:
            raise KoboldError("the backend went away")
        while on_text("partial text"):  # until the job is withdrawn (the backend aborted)
            threading.Event().wait(0.01)
        return Generation("partial text", None)


def test_a_backend_that_fails_mid_stream_hands_the_job_back_with_its_text_at_once():
    cluster = StreamingCluster([job()])
    harness = Harness(cluster, StreamingKobold(fail=True), max_attempts=3)

    harness.worker.step()

    # Not tried again from nothing: the cluster continues the text elsewhere.
    assert len(harness.kobold.generated) == 1
    assert cluster.given_back_texts == ["partial text"]
    assert cluster.submitted == []


def test_sigterm_hands_the_unfinished_job_back_with_its_text_and_submits_nothing():
    cluster = StreamingCluster([Job("job-1", {"prompt": "p", "max_length": 20}, 150)])
    kobold = StreamingKobold(fail=False)
    bridge = real_bridge(cluster, kobold)
    bridge.start()
    assert kobold.streaming.wait(5)

    bridge.stop.set()
    bridge.hand_back.set()  # what the SIGTERM handler does
    bridge.join()

    assert cluster.given_back == ["job-1"]
    assert cluster.given_back_texts == ["partial text"]
    wait_until(lambda: bridge.stats.in_flight == 0)  # the backend was told to stop
    assert cluster.submitted == []


def test_a_job_is_given_back_once_when_sigterm_and_its_stopping_worker_both_reach_it():
    """SIGTERM sets `stop` and hands back every unfinished job, while a worker between two
    tries gives its job back because it is stopping: whichever comes first gives it back
    and counts it; the other does neither (it was counted twice, "2 given back", before)."""
    for worker_first in (True, False):
        cluster = FakeCluster([])
        in_flight = InFlight()
        one = Job("job-1", {"prompt": "p", "max_length": 20}, 150)
        in_flight.generating(one, None)
        if worker_first:
            assert in_flight.take_back(one)
            assert in_flight.hand_back_all(cluster) == 0
        else:
            assert in_flight.hand_back_all(cluster) == 1
            assert not in_flight.take_back(one)
        assert cluster.given_back == ([] if worker_first else ["job-1"])
        in_flight.finished(one)
        assert not in_flight.handed_back(one)  # forgotten once its worker is done


def test_a_stopping_worker_does_not_give_back_a_job_sigterm_handed_back():
    cluster = FakeCluster([])
    harness = Harness(cluster, FakeKobold())
    one = Job("job-1", {"prompt": "p", "max_length": 20}, 150)
    harness.worker.in_flight.generating(one, None)
    assert harness.worker.in_flight.hand_back_all(cluster) == 1

    harness.worker._give_back(one, "stopping before it was generated")

    assert cluster.given_back == ["job-1"]
    assert harness.stats.given_back == 0  # the main thread counts SIGTERM's
