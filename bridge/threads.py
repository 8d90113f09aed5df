"""`Bridge`: runs one server's worker threads (`--threads`), logs the periodic summary, tells the
cluster when the server leaves, and hands unfinished jobs back on SIGTERM."""

from __future__ import annotations

import threading
import time

from bridge.cluster import (
    ClusterProtocol,
    ClusterRejected,
)
from bridge.contracts import Clock, KoboldAPI, Settings
from bridge.handback import InFlight
from bridge.polite import Politeness
from bridge.stats import Stats
from bridge.watcher import ModelWatcher
from bridge.worker import Worker, log


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
