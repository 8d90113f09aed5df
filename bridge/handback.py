"""Handing jobs back with their text so far (issue 25).

A job the bridge cannot finish goes back to the cluster at once, with what its backend
generated until then: our cluster keeps that text, pays it, and has the next server continue
from it instead of starting again. That happens when the bridge is stopped with SIGTERM
(`InFlight.hand_back_all`: every unfinished job, without waiting for its generation), and
when the backend fails in the middle of a streamed generation (bridge/worker.py).
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from bridge.cluster import ClusterError, Job, Submitted
from bridge.progress import ProgressSender

log = logging.getLogger("bridge")


class TakesGiveBacks(Protocol):
    def give_back(self, job: Job, text: str = "") -> Submitted: ...


class InFlight:
    """The jobs the workers are generating, each with its progress sender (None when the
    backend does not stream: nothing to hand over but the job)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, tuple[Job, ProgressSender | None]] = {}
        self._handed_back: set[str] = set()

    def generating(self, job: Job, sender: ProgressSender | None) -> None:
        with self._lock:
            if job.id not in self._handed_back:
                self._jobs[job.id] = (job, sender)

    def finished(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)
            self._handed_back.discard(job.id)  # its worker is done with it

    def handed_back(self, job: Job) -> bool:
        """Whether the job was handed back meanwhile (its result must not be submitted)."""
        with self._lock:
            return job.id in self._handed_back

    def take_back(self, job: Job) -> bool:
        """Whether the caller (a worker giving its job back) is the one to do it: False when
        SIGTERM's hand-back has it already. A worker stopping and SIGTERM's hand-back may
        both reach a job at once; only one of them gives it back and counts it."""
        with self._lock:
            if job.id in self._handed_back:
                return False
            self._handed_back.add(job.id)
            self._jobs.pop(job.id, None)
            return True

    def hand_back_all(self, cluster: TakesGiveBacks) -> int:
        """Give every unfinished job back now, with its text so far; how many. The streamed
        ones stop their backend (their senders say so at the next token)."""
        with self._lock:
            jobs = list(self._jobs.values())
            self._jobs.clear()
            self._handed_back.update(job.id for job, _ in jobs)
        for job, sender in jobs:
            text = ""
            if sender is not None:
                sender.withdraw()
                text = sender.text_so_far
            try:
                cluster.give_back(job, text)
            except ClusterError as error:
                log.warning("job %s: could not hand it back: %s", job.id[:8], error)
                continue
            log.info("job %s: handed back with %d characters so far", job.id[:8], len(text))
        return len(jobs)
