"""The bridge's loop: pop a job, generate it with the backend, submit the text; repeat.

No HTTP here. The loop gets a cluster protocol (`bridge.cluster`) and a backend client
(`bridge.kobold.KoboldClient` or `bridge.openai_backend.OpenAIClient`, called `kobold` here
for history's sake) and only sees their results and exceptions, so the tests drive it with
fakes. Several workers (one per `--threads`) share one stop flag, one set of statistics, one
view of the backend's current model and one record of when the owner last used it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol

from bridge.cluster import (
    ClusterProtocol,
    ClusterRejected,
    ClusterUnavailable,
    Job,
    NotACluster,
    NoWork,
    Submitted,
)
from bridge.handback import InFlight
from bridge.heartbeat import heartbeat_for
from bridge.kobold import (
    Generation,
    KoboldBusy,
    KoboldError,
    ModelInfo,
    OnText,
    PayloadRefused,
)
from bridge.polite import Politeness
from bridge.progress import ProgressSender
from bridge.retry import Backoff
from bridge.watcher import ModelWatcher

# Seconds on a monotonic scale. `Bridge` is the one place it is chosen (`time.monotonic`
# unless a test injects another); every other part gets it from there, so that no time read
# from one clock is ever compared with a time read from another.
Clock = Callable[[], float]

log = logging.getLogger("bridge")
# The closing summary goes through its own logger so that --quiet still shows it.
summary_log = logging.getLogger("bridge.summary")

# Used when the cluster does not say how long a job may take: the AI Horde's job ttl.
DEFAULT_TTL = 150.0
# How long past its ttl a generation is still worth waiting for: the cluster accepts a late
# result until the job's slot goes to another server, which takes its reaper a minute or so.
LATE_GRACE = 60.0


class KoboldAPI(Protocol):
    """What the loop needs from the backend (`KoboldClient`, `OpenAIClient`, or a fake)."""

    url: str
    label: str  # "KoboldAI", "KoboldCpp", "llama.cpp server" ...
    streams: bool  # whether generate() can call back with the text so far

    def model_info(self) -> ModelInfo: ...

    def generate(
        self, payload: dict, timeout: float | None = None, on_text: OnText | None = None
    ) -> Generation: ...

    def busy(self, ours: int) -> str | None:
        """Why the backend should get no job now (its owner uses it), or None."""
        ...


@dataclass
class Settings:
    """How the loop behaves; __main__ fills it from the Config, tests with short delays."""

    interval: float = 1.0  # wait when there is no work
    threads: int = 1
    max_length: int | None = None  # overrides, capped by what the backend allows
    max_context_length: int | None = None
    model_name: str | None = None  # advertise this instead of the backend's model name
    pause_when_busy: float = 0.0  # after the owner used the backend, wait this long
    refresh_interval: float = 30.0  # re-read the backend's model and limits this often
    summary_interval: float = 300.0
    maintenance_interval: float = 30.0  # poll slowly while the cluster has us in maintenance
    max_attempts: int = 4  # tries to generate one job before giving it back
    submit_patience: float = 600.0  # keep retrying a submit this long: the result is paid work
    stop_grace: float = 10.0  # after Ctrl-C, keep retrying a submit only this long
    log_prompts: bool = False
    backoff: Backoff = field(default_factory=Backoff)
    # 503 means KoboldAI is busy with someone else right now: retry soon, not after minutes.
    busy_backoff: Backoff = field(default_factory=lambda: Backoff(cap=4.0))


def estimate_tokens(text: str, max_length: object = None) -> int:
    """The cluster's count (DESIGN §4.6: a quarter of the characters, rounded up, at most the
    job's `max_length`), used when the cluster did not tell us its own."""
    tokens = math.ceil(len(text) / 4) if text else 0
    if isinstance(max_length, int) and not isinstance(max_length, bool) and max_length > 0:
        return min(tokens, max_length)
    return tokens


def _short(job: Job) -> str:
    return job.id[:8]


def format_duration(seconds: float) -> str:
    return str(timedelta(seconds=int(seconds)))


def format_kudos(kudos: float) -> str:
    """At most two decimals, none when whole: 16, 3.4, 0.25."""
    return f"{kudos:.2f}".rstrip("0").rstrip(".")


class Stats:
    """Counters shared by every worker thread."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.started = clock()
        self.done = 0
        self.given_back = 0  # returned unpaid: refused payload, repeated errors, a stop
        self.dropped = 0  # expired, refused by the cluster or abandoned: nobody was paid
        self.tokens = 0
        self.kudos = 0.0  # the AI Horde protocol's rewards, when the cluster reports them
        self.seconds = 0.0  # time spent generating, for the average speed
        self.in_flight = 0
        self.popping = 0  # workers waiting for a pop's answer (long-polls last seconds)

    def add(self, **counts: float) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def summary(self) -> str:
        with self._lock:
            speed = self.tokens / self.seconds if self.seconds else 0.0
            kudos = f"{format_kudos(self.kudos)} kudos; " if self.kudos else ""
            return (
                f"{self.done} jobs done, {self.given_back} given back, {self.dropped} dropped; "
                f"{self.tokens} tokens at {speed:.1f} tokens/s; {kudos}"
                f"up {format_duration(self._clock() - self.started)}"
            )


Wait = Callable[[float, bool], None]


class Worker:
    """One pop/generate/submit loop. Run several (threads) to serve jobs concurrently."""

    def __init__(
        self,
        *,
        cluster: ClusterProtocol,
        kobold: KoboldAPI,
        settings: Settings,
        stop: threading.Event,
        stats: Stats,
        watcher: ModelWatcher,
        clock: Clock,
        wait: Wait | None = None,
        politeness: Politeness | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        self.cluster = cluster
        self.in_flight = in_flight or InFlight()
        self.kobold = kobold
        self.settings = settings
        self.stop = stop
        self.stats = stats
        self.watcher = watcher
        self.politeness = politeness
        self._wait = wait or self._real_wait
        self._clock = clock
        self._kobold_failures = 0
        self._cluster_failures = 0
        self._cluster_answered = False
        self._maintenance: str | None = None
        self._paused: str | None = None

    def _real_wait(self, seconds: float, interruptible: bool = True) -> None:
        # Interruptible waits end at once on Ctrl-C; the others are the short pauses between
        # retries that must go on during a graceful stop (delivering a finished job).
        if interruptible:
            self.stop.wait(seconds)
        else:
            time.sleep(seconds)

    def run(self) -> None:
        """Loop until the stop flag is set. Raises ClusterRejected (fatal) to the caller."""
        while not self.stop.is_set():
            try:
                delay = self.step()
            except ClusterRejected:
                raise
            except Exception:
                # A bug must not silently end a contributor's bridge; say so loudly and go on.
                log.exception("unexpected error in the bridge loop; continuing")
                delay = self.settings.backoff.delay(1)
            if delay > 0:
                self._wait(delay, True)

    def step(self) -> float:
        """Check the backend, pop, and serve the job if there is one. Returns the seconds to
        wait before the next step (0 after a job: there may be more work)."""
        try:
            capabilities = self.watcher.capabilities()
            polite = self.politeness.delay(self.stats.in_flight) if self.politeness else 0.0
        except KoboldError as error:
            self.watcher.invalidate()
            self._kobold_failures += 1
            delay = self.settings.backoff.delay(self._kobold_failures)
            log.debug("checking the backend again in %.1f s: %s", delay, error)
            return delay
        self._kobold_failures = 0
        if polite > 0:
            return polite
        if self.stop.is_set():
            return 0.0

        self.stats.add(popping=1)
        asked, wait = self._clock(), self.cluster.pop_wait
        try:
            answer = self.cluster.pop(capabilities)
        except NotACluster as error:
            # At start this is a wrong --cluster-url. Once the cluster has answered, it is more
            # likely a proxy or a deployment in progress: wait it out like an outage.
            if not self._cluster_answered:
                raise
            return self._cluster_down(error)
        except ClusterUnavailable as error:
            return self._cluster_down(error)
        finally:
            self.stats.add(popping=-1)
        self._cluster_answered = True
        if self._cluster_failures:
            log.info("the cluster at %s answers again", self.cluster.url)
            self._cluster_failures = 0

        if isinstance(answer, NoWork):
            # Held for at least half the wait asked: the cluster long-polls and already waited
            # for work, so ask again at once. A pop answered sooner (plain polling, or a
            # cluster that ignores "wait") is followed by the poll interval, as before.
            held = wait > 0 and self._clock() - asked >= wait / 2
            delay = self._idle(answer)
            return 0.0 if held and answer.maintenance is None else delay
        if self._maintenance is not None:
            log.info("the cluster gives this server jobs again")
            self._maintenance = None
        self.serve(answer)
        return 0.0

    def _cluster_down(self, error: Exception) -> float:
        self._cluster_failures += 1
        delay = self.settings.backoff.delay(self._cluster_failures)
        log.warning("retrying in %.1f s: %s", delay, error)
        return delay

    def _idle(self, answer: NoWork) -> float:
        if answer.maintenance is not None:
            if answer.maintenance != self._maintenance:
                log.warning(
                    "the cluster has this server in maintenance: %s; asking again every %.0f s",
                    answer.maintenance,
                    self.settings.maintenance_interval,
                )
                self._maintenance = answer.maintenance
            return max(self.settings.maintenance_interval, self.settings.interval)
        if self._maintenance is not None:
            log.info("the cluster took this server out of maintenance")
            self._maintenance = None
        if answer.paused != self._paused:  # one line when it starts, one when it ends
            if answer.paused:
                log.warning("PAUSED: %s", answer.paused)
            else:
                log.info("the cluster no longer has this server paused")
            self._paused = answer.paused
        log.debug("no work (skipped: %s)", answer.skipped or "nothing")
        return self.settings.interval

    def serve(self, job: Job) -> None:
        """Generate and deliver one job; every outcome is logged and counted."""
        if job.received is None:
            job.received = self._clock()
        self.stats.add(in_flight=1)
        try:
            ttl = f"{job.ttl:.0f} s" if job.ttl is not None else "none"
            log.debug("job %s: popped (ttl %s)", _short(job), ttl)
            if self.settings.log_prompts:
                log.info("job %s prompt: %r", _short(job), job.payload.get("prompt"))
            generated = self._generate(job)
            if generated is not None and not self.in_flight.handed_back(job):
                self._deliver(job, *generated)
        finally:
            self.in_flight.finished(job)
            self.stats.add(in_flight=-1)

    def _generate(self, job: Job) -> tuple[Generation, float] | None:
        """The text and the seconds it took, or None if the job was given back or dropped."""
        received = job.received if job.received is not None else self._clock()
        deadline = received + (job.ttl if job.ttl is not None else DEFAULT_TTL)
        failures = busy = 0
        while True:
            if self.stop.is_set():
                self._give_back(job, "stopping before it was generated")
                return None
            if self._clock() > deadline:
                # The cluster may already have handed the slot to another server.
                log.warning(
                    "job %s: its ttl (%.0f s) passed before it could be generated; dropping it",
                    _short(job),
                    deadline - received,
                )
                self._give_back(job, "ttl passed", count=False)
                self.stats.add(dropped=1)
                return None
            started = self._clock()
            # A slow server's long job may legitimately take more than KoboldClient's default
            # timeout: the cluster sized the ttl to this server's speed, so wait that long.
            patience = deadline - started + LATE_GRACE
            sender = self._progress_sender(job)
            self.in_flight.generating(job, sender)  # SIGTERM hands it back from here on
            # The cluster gives back a job whose server goes quiet (bridge/heartbeat.py).
            heartbeat = heartbeat_for(self.cluster, job, sender)
            try:
                if sender is None:
                    generation = self.kobold.generate(job.payload, patience)
                else:
                    generation = self.kobold.generate(job.payload, patience, on_text=sender.update)
                if sender is not None and sender.gone:
                    # Cancelled by its client (or its slot went elsewhere): the backend was
                    # stopped; the text so far is delivered, and paid if the cluster takes it.
                    log.info(
                        "job %s: the cluster no longer wants it; stopped %s, delivering the "
                        "text so far",
                        _short(job),
                        self.kobold.label,
                    )
                return generation, self._clock() - started
            except KoboldBusy:
                busy += 1
                delay = self.settings.busy_backoff.delay(busy)
                log.debug("job %s: the backend is busy; retrying in %.1f s", _short(job), delay)
            except PayloadRefused as error:
                log.warning("job %s: %s", _short(job), error)
                self._give_back(job, f"{self.kobold.label} refused it")
                return None
            except KoboldError as error:
                failures += 1
                # Make the next pop wait until KoboldAI answers again.
                self.watcher.invalidate()
                so_far = sender.text_so_far if sender is not None else ""
                if so_far and not self.in_flight.handed_back(job):
                    # Trying again would start from nothing: the cluster continues the
                    # text so far on another server at once instead.
                    log.warning("job %s: %s", _short(job), error)
                    self._give_back(job, "the backend failed mid-generation", text=so_far)
                    return None
                if failures >= self.settings.max_attempts:
                    log.warning("job %s: %s", _short(job), error)
                    self._give_back(job, f"{failures} tries failed")
                    return None
                delay = self.settings.backoff.delay(failures)
                log.warning(
                    "job %s: retrying in %.1f s (try %d of %d): %s",
                    _short(job),
                    delay,
                    failures + 1,
                    self.settings.max_attempts,
                    error,
                )
            finally:
                if sender is not None:
                    sender.close()
                if heartbeat is not None:
                    heartbeat.close()
            self._wait(delay, True)

    def _progress_sender(self, job: Job) -> ProgressSender | None:
        """A sender of the text so far, when the backend streams and the cluster takes it."""
        if not (self.cluster.takes_progress and self.kobold.streams):
            return None
        return ProgressSender(self.cluster, job, self._clock)

    def _deliver(self, job: Job, generation: Generation, seconds: float) -> None:
        """Submit the text, retrying network errors: generating it again would waste the GPU
        time and could pay twice, so this never goes back to KoboldAI."""
        failures = 0
        first_failure = stop_seen = None
        while True:
            try:
                result = self.cluster.submit(
                    job, generation.text, generation.tokens, generation.prompt
                )
                break
            except ClusterUnavailable as error:
                failures += 1
                now = self._clock()
                first_failure = now if first_failure is None else first_failure
                if self.stop.is_set():
                    stop_seen = now if stop_seen is None else stop_seen
                    if now - stop_seen >= self.settings.stop_grace:
                        log.warning("job %s: abandoned while stopping: %s", _short(job), error)
                        self.stats.add(dropped=1)
                        return
                if now - first_failure >= self.settings.submit_patience:
                    log.error("job %s: could not submit it, dropping it: %s", _short(job), error)
                    self.stats.add(dropped=1)
                    return
                delay = self.settings.backoff.delay(failures)
                log.warning(
                    "job %s: submit failed, retrying in %.1f s: %s", _short(job), delay, error
                )
                self._wait(delay, False)
        self._record(job, generation, seconds, result)

    def _record(self, job: Job, generation: Generation, seconds: float, result: Submitted) -> None:
        text = generation.text
        if self.settings.log_prompts:
            log.info("job %s text: %r", _short(job), text)
        if result.outcome in ("accepted", "duplicate"):
            tokens = result.reward
            if tokens is None:
                tokens = generation.tokens
            if tokens is None:
                tokens = estimate_tokens(text, job.payload.get("max_length"))
            self.stats.add(done=1, tokens=tokens, seconds=seconds, kudos=result.kudos or 0.0)
            speed = tokens / seconds if seconds > 0 else 0.0
            kudos = f", {format_kudos(result.kudos)} kudos" if result.kudos is not None else ""
            note = "" if result.outcome == "accepted" else " (the cluster already had it)"
            log.info(
                "job %s: %d tokens in %.1f s (%.1f tokens/s)%s%s",
                _short(job),
                tokens,
                seconds,
                speed,
                kudos,
                note,
            )
        elif result.outcome == "expired":
            log.warning(
                "job %s: the cluster no longer wants it (%s); moving on",
                _short(job),
                result.message,
            )
            self.stats.add(dropped=1)
        else:
            log.error("job %s: the cluster refused the result: %s", _short(job), result.message)
            self.stats.add(dropped=1)

    def _give_back(self, job: Job, reason: str, *, count: bool = True, text: str = "") -> None:
        """Report the job as faulted so its slot goes to another server now, not at its ttl,
        with its text so far (`text`), which the next server continues. One try only: if it
        fails, the cluster re-queues the job when it stalls or its ttl passes anyway."""
        if self.in_flight.handed_back(job):
            return  # SIGTERM gave it back already
        if count:
            self.stats.add(given_back=1)
        try:
            result = self.cluster.give_back(job, text)
        except ClusterUnavailable as error:
            log.warning("job %s: could not give it back (%s): %s", _short(job), reason, error)
            return
        log.info("job %s: given back to the cluster (%s)", _short(job), reason)
        log.debug("job %s: give-back answered %s", _short(job), result.outcome)


class Bridge:
    """Runs `settings.threads` workers and the periodic summary until stopped."""

    def __init__(
        self,
        *,
        cluster: ClusterProtocol,
        kobold: KoboldAPI,
        settings: Settings,
        stop: threading.Event | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.cluster = cluster
        self.kobold = kobold
        self.settings = settings
        self.stop = stop or threading.Event()
        self.stats = Stats(clock)
        self.watcher = ModelWatcher(kobold, settings, clock)
        self.politeness = Politeness(kobold, settings, clock)
        self.fatal: ClusterRejected | None = None
        self.in_flight = InFlight()
        # Set by SIGTERM: hand every unfinished job back now instead of finishing it.
        self.hand_back = threading.Event()
        self._clock = clock
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for number in range(1, self.settings.threads + 1):
            worker = Worker(
                cluster=self.cluster,
                kobold=self.kobold,
                settings=self.settings,
                stop=self.stop,
                stats=self.stats,
                watcher=self.watcher,
                clock=self._clock,
                politeness=self.politeness,
                in_flight=self.in_flight,
            )
            # Daemon threads: a second Ctrl-C must be able to end the process at once even
            # while a worker waits on KoboldAI.
            thread = threading.Thread(
                target=self._run, args=(worker,), name=f"worker-{number}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _run(self, worker: Worker) -> None:
        try:
            worker.run()
        except ClusterRejected as error:
            if self.fatal is None:
                self.fatal = error
            self.stop.set()

    def leave(self) -> None:
        """Tell the cluster this server stops (after a clean stop), so that it is shown as
        inactive now and requests stop waiting for it."""
        capabilities = self.watcher.last
        if capabilities is not None and self.cluster.leave(capabilities):
            log.info("told the cluster this server is leaving")

    def join(self, poll: float = 0.2) -> None:
        """Wait for every worker to end, logging the summary every `summary_interval`.
        Polls with a short timeout so the main thread stays responsive to Ctrl-C (Windows
        delivers it only between waits)."""
        next_summary = self._clock() + self.settings.summary_interval
        while alive := [thread for thread in self._threads if thread.is_alive()]:
            if self.hand_back.is_set():
                # SIGTERM: the unfinished jobs go back with their text so far, and the
                # workers (maybe blocked in a backend request) are left to the exit.
                handed = self.in_flight.hand_back_all(self.cluster)
                self.stats.add(given_back=handed)
                return
            if (
                self.stop.is_set()
                and self.stats.in_flight == 0
                and self.stats.popping >= len(alive)
            ):
                # Every worker left waits in a long-poll that may last many seconds and would
                # only bring a job to give back: stop now. The cluster hands a job claimed by
                # an abandoned pop to another server when its ttl passes.
                return
            alive[0].join(poll)
            if self._clock() >= next_summary:
                log.info("summary: %s", self.stats.summary())
                next_summary += self.settings.summary_interval
