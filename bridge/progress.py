"""Sending a job's text so far to the cluster while the backend streams it (issue 12).

The stream is read in the worker's thread; the posts go from a thread of their own, so a slow
cluster never slows the reading. Only the latest text is kept: at most one post every
`interval` seconds, each with the whole text so far. The final submit stays the only record
of the generation; a failed progress post is never retried for its own sake and never fails
the job.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Literal, Protocol

from bridge.cluster import Job

log = logging.getLogger("bridge")

# ok: taken; gone: the cluster no longer wants this job (stop generating it); unsupported:
# this cluster does not take progress at all; failed: anything else (try again later).
ProgressOutcome = Literal["ok", "gone", "unsupported", "failed"]


class TakesProgress(Protocol):
    takes_progress: bool

    def progress(self, job: Job, text: str) -> ProgressOutcome: ...


class ProgressSender:
    """Posts one job's progress; `update` is the backend's `on_text` callback."""

    def __init__(
        self,
        cluster: TakesProgress,
        job: Job,
        clock: Callable[[], float],
        interval: float = 0.1,
    ) -> None:
        self.cluster = cluster
        self.job = job
        self.interval = interval
        self.gone = False  # the cluster said it no longer wants the job
        self.posted = 0
        self._clock = clock
        self._changed = threading.Condition()
        self._latest = ""
        self._sent = ""
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"progress-{job.id[:8]}")
        self._thread.daemon = True
        self._thread.start()

    def update(self, text: str) -> bool:
        """Record the text so far; False once the cluster no longer wants the job."""
        with self._changed:
            self._latest = text
            self._changed.notify_all()
        return not self.gone

    @property
    def text_so_far(self) -> str:
        """The latest text the backend streamed (what a give-back hands over)."""
        with self._changed:
            return self._latest

    def withdraw(self) -> None:
        """The job is handed back: `update` says stop (the backend is aborted), nothing more
        is posted."""
        self.gone = True
        self.close()

    def close(self) -> None:
        """The generation ended: post nothing more (the submit carries the whole text)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def _run(self) -> None:
        last = -math.inf
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed or self._latest != self._sent)
                pause = last + self.interval - self._clock()
                if pause > 0:
                    self._changed.wait_for(lambda: self._closed, timeout=pause)
                if self._closed:
                    return
                text = self._sent = self._latest
            outcome = self.cluster.progress(self.job, text)
            last = self._clock()
            self.posted += 1
            if outcome == "gone":
                self.gone = True
                return
            if outcome == "unsupported":
                return
