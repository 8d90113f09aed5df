"""Telling the cluster a job is still being generated (issue 25).

A cluster that heard from a job's server and then nothing for its stall time
(KOBOLDCLUSTER_STALL_SECONDS, 15 s by default) gives the job to another server. While the
backend generates, a thread of its own posts a heartbeat (a progress post without text)
every INTERVAL seconds. A streamed job's text posts (bridge/progress.py) are signs of life
too: its heartbeat only speaks when the stream posted nothing for an interval (a slow
backend between two tokens), and not at first (the stream's first post asks the cluster
whether it takes progress). It stops with the generation, or when the cluster says it no
longer wants the job or takes no progress at all. A failed heartbeat never fails the job.
"""

from __future__ import annotations

import threading
from typing import Literal, Protocol

from bridge.cluster import Job

# A third of the cluster's default stall time: two lost heartbeats are not a stall.
INTERVAL = 5.0


class TakesHeartbeats(Protocol):
    takes_progress: bool

    def progress(
        self, job: Job, text: str | None
    ) -> Literal["ok", "gone", "unsupported", "failed"]: ...


class Posts(Protocol):
    """What a heartbeat reads of the job's progress sender (bridge/progress.py)."""

    posted: int  # progress posts so far
    gone: bool  # the cluster no longer wants the job


class Heartbeat:
    """Posts heartbeats for one job from a daemon thread until `close`.

    Without a stream, the first goes at once: only a job that showed a sign of life can be
    noticed stalling. With one (`stream`), only after an interval without a text post."""

    def __init__(
        self,
        cluster: TakesHeartbeats,
        job: Job,
        interval: float = INTERVAL,
        stream: Posts | None = None,
    ) -> None:
        self.cluster = cluster
        self.job = job
        self.interval = interval
        self.stream = stream
        self.sent = 0
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job.id[:8]}")
        self._thread.daemon = True
        self._thread.start()

    def close(self) -> None:
        """The generation ended (the submit or the give-back says the rest)."""
        self._closed.set()

    def _run(self) -> None:
        seen = 0
        if self.stream is not None:
            self._closed.wait(self.interval)
        while not self._closed.is_set() and self.cluster.takes_progress:
            if self.stream is not None:
                if self.stream.gone:
                    return
                seen, quiet = self.stream.posted, self.stream.posted == seen
                if not quiet:  # the stream showed life meanwhile
                    self._closed.wait(self.interval)
                    continue
            outcome = self.cluster.progress(self.job, None)
            self.sent += 1
            if outcome in ("gone", "unsupported"):
                return
            self._closed.wait(self.interval)


def heartbeat_for(
    cluster: TakesHeartbeats, job: Job, stream: Posts | None = None
) -> Heartbeat | None:
    """A heartbeat for `job` (whose text posts are `stream`'s, if it streams) when the
    cluster takes progress posts, else None."""
    return Heartbeat(cluster, job, stream=stream) if cluster.takes_progress else None
