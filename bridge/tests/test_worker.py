"""The loop, driven with a fake cluster, a fake KoboldAI and a fake clock: no HTTP, no sleeping."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from bridge.cluster import (
    Capabilities,
    ClusterRejected,
    ClusterUnavailable,
    Job,
    NotACluster,
    NoWork,
    Submitted,
)
from bridge.contracts import Settings
from bridge.fitting import estimate_tokens
from bridge.kobold import (
    Generation,
    GenerationFailed,
    KoboldBusy,
    KoboldUnreachable,
    ModelInfo,
    PayloadRefused,
)
from bridge.polite import Politeness
from bridge.retry import Backoff
from bridge.stats import Stats, format_kudos
from bridge.threads import Bridge
from bridge.watcher import ModelWatcher
from bridge.worker import Worker

JOB_ID = "5b7f0c2e-8d37-4a57-9a0e-3c8f3f1d2a11"
SHORT = JOB_ID[:8]
INFO = ModelInfo("KoboldAI_Tiny-1B", 512, 2048)


class FakeClock:
    """Monotonic seconds that move only when a test moves them. `start` is the machine's
    uptime as far as the code under test can tell: near 0 on a machine booted a moment ago."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class FakeCluster:
    """Hands out scripted pop answers (then no work) and records every call. Thread-safe."""

    url = "http://cluster.test"
    takes_progress = False  # progress is tested with the doubles (test_streaming.py)
    pop_wait = 0.0  # long-poll: set it, and make on_pop advance the clock as a hold would

    def progress(self, job: Job, text: str) -> str:
        raise AssertionError("no progress without streaming")

    def __init__(self, pops: list[Any] = (), submits: list[Any] = ()) -> None:
        self.pops: deque[Any] = deque(pops)
        self.submit_script: deque[Any] = deque(submits)
        self.popped: list[Capabilities] = []
        self.submitted: list[tuple[str, str]] = []
        self.given_back: list[str] = []
        self.given_back_texts: list[str] = []
        self.token_counts: list[int | None] = []  # what each submit reported, in order
        self.on_pop: Callable[[], None] | None = None
        self._lock = threading.Lock()

    def pop(self, capabilities: Capabilities) -> Job | NoWork:
        with self._lock:
            self.popped.append(capabilities)
            if len(self.popped) > 1000:
                # A loop that never waits would otherwise hang the test run.
                pytest.fail("runaway loop: more than 1000 pops")
            answer = self.pops.popleft() if self.pops else NoWork()
        if self.on_pop:
            self.on_pop()
        if isinstance(answer, Exception):
            raise answer
        return answer

    def submit(
        self, job: Job, text: str, tokens: int | None = None, prompt: Any = None
    ) -> Submitted:
        with self._lock:
            answer = self.submit_script.popleft() if self.submit_script else None
            if isinstance(answer, Exception):
                raise answer
            self.submitted.append((job.id, text))
            self.token_counts.append(tokens)
        return answer or Submitted("accepted", estimate_tokens(text))

    def give_back(self, job: Job, text: str = "") -> Submitted:
        with self._lock:
            self.given_back.append(job.id)
            self.given_back_texts.append(text)
        return Submitted("accepted", 0)


class FakeKobold:
    """Answers prompt.upper(), after raising whatever is scripted first; counts its tokens
    as one per character when `counts` is set, and is busy while `busy_reasons` last."""

    url = "http://kobold.test"
    label = "KoboldAI"
    streams = False

    def __init__(self, errors: list[Exception] = (), info_errors: list[Exception] = ()) -> None:
        self.errors: deque[Exception] = deque(errors)
        self.info_errors: deque[Exception] = deque(info_errors)
        self.info = INFO
        self.generated: list[dict] = []
        self.timeouts: list[float | None] = []
        self.info_calls = 0
        self.on_generate: Callable[[], None] | None = None
        self.clock: FakeClock | None = None
        self.seconds = 2.0  # how long each generation takes on the fake clock
        self.counts = False
        self.busy_reasons: deque[str | None] = deque()
        self.busy_calls: list[int] = []  # the `ours` of each busy() call
        self._lock = threading.Lock()

    def busy(self, ours: int) -> str | None:
        self.busy_calls.append(ours)
        return self.busy_reasons.popleft() if self.busy_reasons else None

    def model_info(self) -> ModelInfo:
        self.info_calls += 1
        if self.info_errors:
            raise self.info_errors.popleft()
        return self.info

    def generate(self, payload: dict, timeout: float | None = None) -> str:
        with self._lock:
            self.generated.append(payload)
            self.timeouts.append(timeout)
            error = self.errors.popleft() if self.errors else None
        if self.on_generate:
            self.on_generate()
        if error:
            raise error
        if self.clock:
            self.clock.now += self.seconds
        text = payload["prompt"].upper()
        return Generation(text, len(text) if self.counts else None)


def job(prompt: str = "hello world!", ttl: float | None = 150, received: float = 1000.0) -> Job:
    return Job(JOB_ID, {"prompt": prompt, "max_length": 20}, ttl, received=received)


class Harness:
    """A Worker wired to fakes; waits advance the fake clock and are recorded."""

    def __init__(
        self,
        cluster: FakeCluster,
        kobold: FakeKobold | None = None,
        *,
        start: float = 1000.0,
        **settings: Any,
    ) -> None:
        self.clock = FakeClock(start)
        self.cluster = cluster
        self.kobold = kobold or FakeKobold()
        self.kobold.clock = self.clock
        settings.setdefault("backoff", Backoff(1.0, 60.0, rng=lambda: 1.0))
        settings.setdefault("busy_backoff", Backoff(0.5, 4.0, rng=lambda: 1.0))
        self.settings = Settings(**settings)
        self.stop = threading.Event()
        self.stats = Stats(self.clock)
        self.waits: list[tuple[float, bool]] = []
        self.stop_after_waits: int | None = None
        self.watcher = ModelWatcher(self.kobold, self.settings, self.clock)
        self.worker = Worker(
            cluster=cluster,
            kobold=self.kobold,
            settings=self.settings,
            stop=self.stop,
            stats=self.stats,
            watcher=self.watcher,
            clock=self.clock,
            wait=self.wait,
            politeness=Politeness(self.kobold, self.settings, self.clock),
        )

    def wait(self, seconds: float, interruptible: bool) -> None:
        self.waits.append((seconds, interruptible))
        self.clock.now += seconds
        if self.stop_after_waits is not None and len(self.waits) >= self.stop_after_waits:
            self.stop.set()

    def run(self, waits: int) -> None:
        """Run the loop until it has waited `waits` times (each wait is one idle period)."""
        self.stop_after_waits = waits
        self.worker.run()


@pytest.fixture(autouse=True)
def _bridge_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge")


def test_serves_a_job_and_submits_its_text(caplog):
    cluster = FakeCluster([job()], [Submitted("accepted", 3)])
    harness = Harness(cluster)
    harness.run(waits=1)
    assert cluster.submitted == [(JOB_ID, "HELLO WORLD!")]
    assert cluster.popped[0] == Capabilities("KoboldAI/Tiny-1B", 512, 2048)
    assert (harness.stats.done, harness.stats.tokens, harness.stats.seconds) == (1, 3, 2.0)
    assert f"job {SHORT}: 3 tokens in 2.0 s (1.5 tokens/s)" in caplog.messages


def test_kudos_are_shown_beside_the_tokens_counted_from_the_text(caplog):
    # The AI Horde protocol's reward is kudos, not tokens: the tokens come from the text.
    cluster = FakeCluster([job(), job("second")], [Submitted("accepted", kudos=3.4)])
    cluster.submit_script.append(Submitted("duplicate", kudos=None))
    harness = Harness(cluster)
    harness.run(waits=1)
    assert (harness.stats.done, harness.stats.tokens, harness.stats.kudos) == (2, 5, 3.4)
    assert f"job {SHORT}: 3 tokens in 2.0 s (1.5 tokens/s), 3.4 kudos" in caplog.messages
    assert f"job {SHORT}: 2 tokens in 2.0 s (1.0 tokens/s) (the cluster already had it)" in (
        caplog.messages
    )
    assert "; 5 tokens at 1.2 tokens/s; 3.4 kudos; up 0:00:0" in harness.stats.summary()


def test_counted_tokens_stop_at_the_jobs_max_length():
    long_job = job("x" * 40)
    long_job.payload["max_length"] = 4
    harness = Harness(FakeCluster([long_job], [Submitted("accepted", kudos=4.0)]))
    harness.run(waits=1)
    assert harness.stats.tokens == 4


def test_kobold_may_take_as_long_as_the_ttl_allows():
    lost = KoboldUnreachable("cannot reach KoboldAI (no answer in time)")
    harness = Harness(FakeCluster([job(ttl=1200)]), FakeKobold([lost]))
    harness.run(waits=2)
    # The whole ttl plus a grace at first; after a 1 s retry wait, one second less.
    assert harness.kobold.timeouts == [1260.0, 1259.0]


def test_poll_interval_holds_when_there_is_no_work():
    cluster = FakeCluster()
    harness = Harness(cluster, interval=0.7)
    harness.run(waits=5)
    assert harness.waits == [(0.7, True)] * 5
    assert len(cluster.popped) == 5


def test_after_a_held_pop_the_next_pop_comes_at_once():
    cluster = FakeCluster()
    cluster.pop_wait = 20.0
    harness = Harness(cluster, interval=0.7)
    holds = [20.0, 12.0, 9.0, 0.0]  # seconds each pop takes on the worker's clock

    def hold() -> None:
        harness.clock.now += holds.pop(0) if holds else 0.0

    cluster.on_pop = hold
    harness.run(waits=2)
    # Held 20 s and 12 s (at least half the wait): asked again at once. Answered after 9 s
    # and at once (a cluster that does not hold): the poll interval.
    assert len(cluster.popped) == 4
    assert harness.waits == [(0.7, True)] * 2


def test_after_a_job_the_next_pop_comes_at_once():
    cluster = FakeCluster([job(), job()])
    harness = Harness(cluster, interval=0.7)
    harness.run(waits=1)
    assert len(cluster.submitted) == 2 and len(cluster.popped) == 3
    assert harness.waits == [(0.7, True)]


def test_busy_kobold_is_retried_soon(caplog):
    kobold = FakeKobold([KoboldBusy("KoboldAI is busy (503)")] * 3)
    cluster = FakeCluster([job()])
    harness = Harness(cluster, kobold)
    harness.run(waits=4)
    assert len(kobold.generated) == 4
    assert cluster.submitted == [(JOB_ID, "HELLO WORLD!")]
    assert harness.waits[:3] == [(0.5, True), (1.0, True), (2.0, True)]
    assert cluster.given_back == []


def test_refused_payload_is_given_back_and_the_loop_goes_on(caplog):
    refused = PayloadRefused("KoboldAI refused the job's parameters: temperature: Must be > 0")
    cluster = FakeCluster([job(), job("next")])
    harness = Harness(cluster, FakeKobold([refused]))
    harness.run(waits=1)
    assert cluster.given_back == [JOB_ID]
    assert cluster.submitted == [(JOB_ID, "NEXT")]
    assert harness.stats.given_back == 1 and harness.stats.done == 1
    assert f"job {SHORT}: {refused}" in caplog.messages
    assert f"job {SHORT}: given back to the cluster (KoboldAI refused it)" in caplog.messages


def test_repeated_failures_give_the_job_back_after_max_attempts(caplog):
    lost = KoboldUnreachable("cannot reach KoboldAI (connection lost): is KoboldAI running at x?")
    kobold = FakeKobold([lost] * 4)
    cluster = FakeCluster([job()])
    harness = Harness(cluster, kobold, max_attempts=4)
    harness.run(waits=4)
    assert len(kobold.generated) == 4
    assert cluster.given_back == [JOB_ID] and cluster.submitted == []
    assert [seconds for seconds, _ in harness.waits[:3]] == [1.0, 2.0, 4.0]
    assert f"job {SHORT}: retrying in 1.0 s (try 2 of 4): {lost}" in caplog.messages
    assert f"job {SHORT}: given back to the cluster (4 tries failed)" in caplog.messages


def test_a_failed_generation_makes_the_next_pop_wait_for_kobold():
    kobold = FakeKobold([GenerationFailed("KoboldAI answered 507 to generate: out of memory")])
    harness = Harness(FakeCluster([job()]), kobold)
    harness.run(waits=2)
    # Read once at start, and again after the failure before the next pop.
    assert kobold.info_calls == 2


def test_kobold_that_comes_back_within_the_tries_finishes_the_job():
    lost = KoboldUnreachable("cannot reach KoboldAI (connection refused)")
    cluster = FakeCluster([job()])
    harness = Harness(cluster, FakeKobold([lost, lost]))
    harness.run(waits=3)
    assert cluster.submitted == [(JOB_ID, "HELLO WORLD!")] and cluster.given_back == []


def test_submit_network_errors_are_retried_without_generating_again(caplog):
    down = ClusterUnavailable(
        "cannot reach the cluster at http://cluster.test (connection refused)"
    )
    cluster = FakeCluster([job()], [down, down, Submitted("accepted", 3)])
    harness = Harness(cluster)
    harness.run(waits=3)
    assert len(harness.kobold.generated) == 1
    assert cluster.submitted == [(JOB_ID, "HELLO WORLD!")]
    # Submit retries are not cut short by Ctrl-C: the text is paid work.
    assert harness.waits[:2] == [(1.0, False), (2.0, False)]
    assert f"job {SHORT}: submit failed, retrying in 1.0 s: {down}" in caplog.messages


def test_submit_gives_up_after_its_patience():
    down = ClusterUnavailable("cannot reach the cluster")
    cluster = FakeCluster([job()], [down] * 50)
    harness = Harness(cluster, submit_patience=30.0)
    harness.run(waits=7)
    assert harness.stats.dropped == 1 and harness.stats.done == 0
    # 1 + 2 + 4 + 8 + 16 = 31 s of retries, then dropped; the 6th wait is the idle interval.
    assert [seconds for seconds, _ in harness.waits[:6]] == [1.0, 2.0, 4.0, 8.0, 16.0, 1.0]


def test_expired_job_is_logged_and_the_bridge_moves_on(caplog):
    expired = Submitted("expired", message="Job not found or expired.")
    cluster = FakeCluster([job(), job("next")], [expired])
    harness = Harness(cluster)
    harness.run(waits=1)
    assert harness.stats.dropped == 1 and harness.stats.done == 1
    assert (
        f"job {SHORT}: the cluster no longer wants it (Job not found or expired.); moving on"
        in caplog.messages
    )


def test_already_submitted_counts_as_done(caplog):
    duplicate = Submitted("duplicate", message="This job was already submitted.")
    cluster = FakeCluster([job()], [duplicate])
    harness = Harness(cluster)
    harness.run(waits=1)
    assert harness.stats.done == 1 and harness.stats.tokens == 3
    assert f"job {SHORT}: 3 tokens in 2.0 s (1.5 tokens/s) (the cluster already had it)" in (
        caplog.messages
    )


def test_refused_submit_is_dropped_not_retried(caplog):
    refused = Submitted("refused", message="Too late. (400)")
    cluster = FakeCluster([job()], [refused])
    harness = Harness(cluster)
    harness.run(waits=1)
    assert harness.stats.dropped == 1 and len(cluster.popped) == 2
    assert f"job {SHORT}: the cluster refused the result: Too late. (400)" in caplog.messages


def test_job_whose_ttl_passed_before_generation_is_dropped(caplog):
    cluster = FakeCluster([job(ttl=150, received=800.0)])
    harness = Harness(cluster)
    harness.run(waits=1)
    assert harness.kobold.generated == []
    assert cluster.given_back == [JOB_ID] and harness.stats.dropped == 1
    assert (
        f"job {SHORT}: its ttl (150 s) passed before it could be generated; dropping it"
        in caplog.messages
    )


def test_busy_retries_stop_at_the_ttl():
    cluster = FakeCluster([job(ttl=10)])
    harness = Harness(cluster, FakeKobold([KoboldBusy("busy")] * 100))
    harness.run(waits=6)
    # 0.5 + 1 + 2 + 4 + 4 = 11.5 s > ttl 10: dropped after the fifth try.
    assert len(harness.kobold.generated) == 5
    assert cluster.given_back == [JOB_ID] and cluster.submitted == []


def test_cluster_outage_backs_off_then_recovers(caplog):
    down = ClusterUnavailable(
        "cannot reach the cluster at http://cluster.test (connection refused)"
    )
    cluster = FakeCluster([down, down, down, job()])
    harness = Harness(cluster)
    harness.run(waits=4)
    assert [seconds for seconds, _ in harness.waits] == [1.0, 2.0, 4.0, 1.0]
    assert cluster.submitted == [(JOB_ID, "HELLO WORLD!")]
    assert f"retrying in 4.0 s: {down}" in caplog.messages
    assert "the cluster at http://cluster.test answers again" in caplog.messages


def test_maintenance_polls_slowly_and_says_so_once(caplog):
    maintenance = NoWork(maintenance="Too many failed jobs.")
    cluster = FakeCluster([maintenance] * 3 + [job()])
    harness = Harness(cluster, interval=1.0, maintenance_interval=30.0)
    harness.run(waits=4)
    assert [seconds for seconds, _ in harness.waits] == [30.0, 30.0, 30.0, 1.0]
    warnings = [message for message in caplog.messages if "maintenance" in message]
    assert warnings == [
        "the cluster has this server in maintenance: Too many failed jobs.; "
        "asking again every 30 s",
    ]
    assert "the cluster gives this server jobs again" in caplog.messages


def test_a_pause_is_printed_once_in_one_line_and_its_end_too(caplog):
    paused = NoWork(paused="The server 'x' is paused (too fast): check its backend.")
    cluster = FakeCluster([paused] * 3 + [NoWork()])
    Harness(cluster, interval=1.0).run(waits=4)
    said = [m for m in caplog.messages if "paused" in m.lower()]
    assert said == [
        "PAUSED: The server 'x' is paused (too fast): check its backend.",
        "the cluster no longer has this server paused",
    ]


def test_kobold_down_means_no_pops_until_it_is_back(caplog):
    lost = KoboldUnreachable("cannot reach KoboldAI (connection refused): is KoboldAI running?")
    kobold = FakeKobold(info_errors=[])
    cluster = FakeCluster()
    harness = Harness(cluster, kobold, refresh_interval=1.0)
    harness.run(waits=1)
    assert len(cluster.popped) == 1
    kobold.info_errors.extend([lost, lost, lost])
    harness.stop.clear()
    harness.run(waits=5)
    # The idle wait (1 s) made the model stale; three failed checks, then pops resume.
    assert [seconds for seconds, _ in harness.waits[1:5]] == [1.0, 2.0, 4.0, 1.0]
    assert len(cluster.popped) == 2
    assert f"no new jobs until KoboldAI is back: {lost}" in caplog.messages
    assert (
        "KoboldAI is back, serving KoboldAI/Tiny-1B (max_length 512, max_context_length 2048)"
        in caplog.messages
    )


def test_model_is_refreshed_and_a_change_is_logged(caplog):
    kobold = FakeKobold()
    cluster = FakeCluster()
    harness = Harness(cluster, kobold, refresh_interval=2.5, interval=1.0)
    harness.run(waits=2)
    kobold.info = ModelInfo("koboldcpp/Other-7B", 256, 4096)
    harness.stop.clear()
    harness.run(waits=8)
    assert kobold.info_calls == 3  # at 0 s, 3 s (stale after 2.5) and 6 s
    assert cluster.popped[-1] == Capabilities("koboldcpp/Other-7B", 256, 4096)
    assert (
        "KoboldAI now serves koboldcpp/Other-7B (max_length 256, max_context_length 4096)"
        in caplog.messages
    )


def test_length_overrides_are_capped_by_kobold(caplog):
    cluster = FakeCluster()
    harness = Harness(cluster, max_length=1024, max_context_length=1000)
    harness.run(waits=3)
    # At most half the context: 500 of 1000.
    assert cluster.popped[0] == Capabilities("KoboldAI/Tiny-1B", 500, 1000)
    warnings = [message for message in caplog.messages if "above" in message]
    assert warnings == ["--max-length 1024 is above what KoboldAI allows (500); using 500"]


def test_max_length_leaves_half_the_context_for_the_prompt():
    cluster = FakeCluster()
    harness = Harness(cluster)
    harness.kobold.info = ModelInfo("tiny", 512, 512, max_length_ceiling=512)
    harness.run(waits=1)
    assert cluster.popped[0] == Capabilities("tiny", 256, 512)


def test_no_pop_while_the_backend_is_busy(caplog):
    cluster = FakeCluster([job()])
    harness = Harness(cluster, interval=1.0)
    harness.kobold.busy_reasons.extend(["no free slot"] * 3)
    harness.run(waits=4)
    # Three busy checks (1 s apart) without a pop; then the job, then an idle pop.
    assert harness.waits == [(1.0, True)] * 4
    assert len(cluster.popped) == 2 and cluster.submitted == [(JOB_ID, "HELLO WORLD!")]
    assert caplog.messages.count("no new jobs while the backend is busy: no free slot") == 1
    assert "the backend is free again; taking jobs" in caplog.messages


def test_pause_when_busy_waits_after_the_owners_use():
    cluster = FakeCluster()
    harness = Harness(cluster, interval=1.0, pause_when_busy=5.0)
    harness.kobold.busy_reasons.extend([None, "the owner's request"])
    harness.run(waits=7)
    # Pop; busy (no pop); then 5 s of pause in 1 s steps; then pops again.
    assert len(cluster.popped) == 2
    assert harness.kobold.busy_calls[:2] == [0, 0]


def test_length_overrides_of_a_backend_that_reports_no_context_are_taken_as_given(caplog):
    cluster = FakeCluster()
    harness = Harness(cluster, max_length=1024, max_context_length=8192)
    harness.kobold.info = ModelInfo("m", 512, 2048, "m", 2048, limits_known=False)
    harness.run(waits=1)
    assert cluster.popped[0] == Capabilities("m", 1024, 8192)
    assert not [message for message in caplog.messages if "above" in message]


def test_model_name_override_and_a_larger_max_length_ceiling():
    cluster = FakeCluster()
    harness = Harness(cluster, max_length=1000, model_name="koboldcpp/Mine")
    harness.kobold.info = ModelInfo("koboldcpp/X", 400, 8192, max_length_ceiling=8192)
    harness.run(waits=1)
    assert cluster.popped[0] == Capabilities("koboldcpp/Mine", 1000, 8192)


def test_token_counts_from_the_backend_go_with_the_submit():
    cluster = FakeCluster([job()], [Submitted("accepted", kudos=1.0)])
    harness = Harness(cluster)
    harness.kobold.counts = True
    harness.run(waits=1)
    assert cluster.token_counts == [12]
    assert harness.stats.tokens == 12  # the horde protocol's reward is kudos: the count is ours


def test_stop_after_the_pop_gives_the_job_back():
    cluster = FakeCluster([job()])
    harness = Harness(cluster)
    cluster.on_pop = harness.stop.set
    harness.worker.run()
    assert harness.kobold.generated == [] and cluster.given_back == [JOB_ID]
    assert harness.waits == []


def test_stop_during_generation_finishes_and_submits_the_job():
    cluster = FakeCluster([job(), job("never popped")])
    harness = Harness(cluster)
    harness.kobold.on_generate = harness.stop.set
    harness.worker.run()
    assert cluster.submitted == [(JOB_ID, "HELLO WORLD!")]
    assert len(cluster.popped) == 1


def test_stop_while_the_cluster_is_down_abandons_the_submit_after_the_grace(caplog):
    down = ClusterUnavailable("cannot reach the cluster")
    cluster = FakeCluster([job()], [down] * 50)
    harness = Harness(cluster, stop_grace=5.0)
    harness.kobold.on_generate = harness.stop.set
    harness.worker.run()
    assert [seconds for seconds, _ in harness.waits] == [1.0, 2.0, 4.0]
    assert harness.stats.dropped == 1
    assert f"job {SHORT}: abandoned while stopping: {down}" in caplog.messages


def test_stop_during_a_busy_retry_gives_the_job_back():
    cluster = FakeCluster([job()])
    harness = Harness(cluster, FakeKobold([KoboldBusy("busy")] * 10))
    harness.stop_after_waits = 2
    harness.worker.run()
    assert len(harness.kobold.generated) == 2 and cluster.given_back == [JOB_ID]


def test_prompts_and_texts_stay_out_of_the_logs_unless_asked(caplog):
    harness = Harness(FakeCluster([job("my secret prompt")]))
    harness.run(waits=1)
    assert "secret" not in caplog.text.lower()
    caplog.clear()
    harness = Harness(FakeCluster([job("my secret prompt")]), log_prompts=True)
    harness.run(waits=1)
    assert f"job {SHORT} prompt: 'my secret prompt'" in caplog.messages
    assert f"job {SHORT} text: 'MY SECRET PROMPT'" in caplog.messages


def test_an_unexpected_error_is_logged_and_the_loop_goes_on(caplog):
    cluster = FakeCluster([RuntimeError("a bug"), job()])
    harness = Harness(cluster)
    harness.run(waits=2)
    assert cluster.submitted == [(JOB_ID, "HELLO WORLD!")]
    assert "unexpected error in the bridge loop; continuing" in caplog.messages


def test_rejection_is_fatal_for_the_worker():
    cluster = FakeCluster([ClusterRejected("the cluster rejected the credentials: nope")])
    with pytest.raises(ClusterRejected):
        Harness(cluster).worker.run()


def test_not_a_cluster_is_fatal_at_start_but_an_outage_later(caplog):
    wrong = NotACluster(
        "the server at x is not a KoboldAI Cluster (POST /generate/pop answered 404)"
    )
    with pytest.raises(NotACluster):
        Harness(FakeCluster([wrong])).worker.run()
    cluster = FakeCluster([NoWork(), wrong, job()])
    harness = Harness(cluster)
    harness.run(waits=3)
    assert cluster.submitted == [(JOB_ID, "HELLO WORLD!")]
    assert f"retrying in 1.0 s: {wrong}" in caplog.messages


@pytest.mark.parametrize("uptime", [3.0, 10_000_000.0], ids=["booted-3-s-ago", "up-115-days"])
def test_a_popped_job_is_timed_on_the_workers_clock_whatever_the_uptime(uptime):
    # A protocol builds jobs without a time of receipt (as these two are); the worker stamps
    # them on its own clock. When Job read the system clock instead, a clock injected near 0
    # (a machine booted a moment ago) or far above it disagreed with the job's deadline: the
    # first job below then never expired, or both expired before they were generated.
    first = Job(JOB_ID, {"prompt": "slow", "max_length": 20}, 10)
    second = Job("second-job", {"prompt": "next", "max_length": 20}, 10)
    cluster = FakeCluster([first, second])
    harness = Harness(cluster, FakeKobold([KoboldBusy("busy")] * 5), start=uptime)
    harness.run(waits=6)
    # Busy for 0.5 + 1 + 2 + 4 + 4 = 11.5 s > ttl 10: the first is dropped, the second served.
    assert cluster.given_back == [JOB_ID]
    assert cluster.submitted == [("second-job", "NEXT")]
    assert first.received == uptime and second.received == uptime + 11.5


def test_the_fake_clock_moves_only_when_told():
    clock = FakeClock(start=0.5)
    assert (clock(), clock()) == (0.5, 0.5)
    harness = Harness(FakeCluster(), start=0.5, interval=2.0)
    harness.run(waits=2)
    assert harness.clock() == 4.5
    assert harness.stats.summary().endswith("up 0:00:04")


def test_stats_summary():
    clock = FakeClock()
    stats = Stats(clock)
    stats.add(done=3, tokens=120, seconds=4.0, given_back=1, dropped=2)
    clock.now += 3725
    assert stats.summary() == (
        "3 jobs done, 1 given back, 2 dropped; 120 tokens at 30.0 tokens/s; up 1:02:05"
    )


def test_format_kudos():
    assert [format_kudos(k) for k in (16.0, 3.4, 0.25, 0.004, 1234.5)] == [
        "16",
        "3.4",
        "0.25",
        "0",
        "1234.5",
    ]


def test_estimate_tokens():
    assert [estimate_tokens(text) for text in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]
    assert [estimate_tokens("x" * 100, limit) for limit in (10, 25, 30, None, 0, True)] == [
        10,
        25,
        25,
        25,
        25,
        25,
    ]


def real_bridge(cluster: FakeCluster, kobold: FakeKobold, **settings: Any) -> Bridge:
    settings.setdefault("interval", 0.01)
    settings.setdefault("backoff", Backoff(0.01, 0.05))
    return Bridge(cluster=cluster, kobold=kobold, settings=Settings(**settings))


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_threads_share_the_work_and_the_stats():
    # No `received`: the bridge stamps them on its (real) clock.
    jobs = [Job(f"{i:08d}-job", {"prompt": f"p{i}"}, 150) for i in range(12)]
    cluster = FakeCluster(jobs)
    kobold = FakeKobold()
    in_generate = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow() -> None:
        with lock:
            in_generate["now"] += 1
            in_generate["max"] = max(in_generate["max"], in_generate["now"])
        time.sleep(0.03)
        with lock:
            in_generate["now"] -= 1

    kobold.on_generate = slow
    bridge = real_bridge(cluster, kobold, threads=3)
    bridge.start()
    wait_until(lambda: len(cluster.submitted) == 12)
    bridge.stop.set()
    bridge.join(poll=0.01)
    assert sorted(cluster.submitted) == sorted((j.id, j.payload["prompt"].upper()) for j in jobs)
    assert bridge.stats.done == 12
    assert in_generate["max"] > 1


def test_a_fatal_rejection_stops_every_thread():
    cluster = FakeCluster([ClusterRejected("the cluster rejected the credentials: nope")])
    bridge = real_bridge(cluster, FakeKobold(), threads=3)
    bridge.start()
    bridge.join(poll=0.01)
    assert bridge.stop.is_set()
    assert str(bridge.fatal) == "the cluster rejected the credentials: nope"


def test_join_logs_a_periodic_summary(caplog):
    bridge = real_bridge(FakeCluster(), FakeKobold(), summary_interval=0.05)
    bridge.start()
    threading.Timer(0.3, bridge.stop.set).start()
    bridge.join(poll=0.01)
    summaries = [message for message in caplog.messages if message.startswith("summary: ")]
    assert len(summaries) >= 2
    assert "0 jobs done, 0 given back, 0 dropped" in summaries[0]
