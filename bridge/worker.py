"""The bridge's loop: pop a job, generate it with the backend, submit the text; repeat.

No HTTP here. The loop gets a cluster protocol (`bridge.cluster`) and a backend client
(`bridge.kobold.KoboldClient` or `bridge.openai_backend.OpenAIClient`, called `kobold` here
for history's sake) and only sees their results and exceptions, so the tests drive it with
fakes. Several workers (one per `--threads`) share one stop flag, one set of statistics, one
view of the backend's current model and one record of when the owner last used it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bridge.cluster import (
    ClusterProtocol,
    ClusterRejected,
    ClusterUnavailable,
    Job,
    NotACluster,
    NoWork,
    Submitted,
)
from bridge.contracts import Clock, KoboldAPI, Settings
from bridge.fitting import estimate_tokens
from bridge.handback import InFlight
from bridge.heartbeat import heartbeat_for
from bridge.kobold import (
    Generation,
    KoboldBusy,
    KoboldError,
    PayloadRefused,
)
from bridge.polite import Politeness
from bridge.progress import ProgressSender
from bridge.stats import Stats, format_kudos
from bridge.watcher import ModelWatcher

log = logging.getLogger("bridge")
# The closing summary goes through its own logger so that --quiet still shows it.
summary_log = logging.getLogger("bridge.summary")

# Used when the cluster does not say how long a job may take: the AI Horde's job ttl.
DEFAULT_TTL = 150.0
# How long past its ttl a generation is still worth waiting for: the cluster accepts a late
# result until the job's slot goes to another server, which takes its reaper a minute or so.
LATE_GRACE = 60.0


def _short(job: Job) -> str:
    return job.id[:8]


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
            if not self._still_wanted(job, received, deadline):
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
                generation = self._backend_generate(job, patience, sender)
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
                delay = self._after_failure(job, error, failures, sender)
                if delay is None:
                    return None
            finally:
                if sender is not None:
                    sender.close()
                if heartbeat is not None:
                    heartbeat.close()
            self._wait(delay, True)

    def _still_wanted(self, job: Job, received: float, deadline: float) -> bool:
        """Whether to try (again) to generate the job; if not, it is given back or dropped."""
        if self.stop.is_set():
            self._give_back(job, "stopping before it was generated")
            return False
        if self._clock() > deadline:
            # The cluster may already have handed the slot to another server.
            log.warning(
                "job %s: its ttl (%.0f s) passed before it could be generated; dropping it",
                _short(job),
                deadline - received,
            )
            self._give_back(job, "ttl passed", count=False)
            self.stats.add(dropped=1)
            return False
        return True

    def _backend_generate(
        self, job: Job, patience: float, sender: ProgressSender | None
    ) -> Generation:
        if sender is None:
            return self.kobold.generate(job.payload, patience)
        generation = self.kobold.generate(job.payload, patience, on_text=sender.update)
        if sender.gone:
            # Cancelled by its client (or its slot went elsewhere): the backend was
            # stopped; the text so far is delivered, and paid if the cluster takes it.
            log.info(
                "job %s: the cluster no longer wants it; stopped %s, delivering the text so far",
                _short(job),
                self.kobold.label,
            )
        return generation

    def _after_failure(
        self, job: Job, error: KoboldError, failures: int, sender: ProgressSender | None
    ) -> float | None:
        """The seconds to wait before trying the job again, or None: it was given back."""
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
        return delay

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
        if not self.in_flight.take_back(job):
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
