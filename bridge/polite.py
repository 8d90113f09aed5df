"""Sharing the owner's GPU politely: no new job while the backend says it is busy, nor for a
while after. Shared by all worker threads."""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bridge.contracts import Clock, KoboldAPI, Settings

log = logging.getLogger("bridge")


class Politeness:
    """Takes jobs only while the owner leaves the backend alone: no pop while the backend
    says it is busy (llama.cpp: no free slot; KoboldCpp: generating for someone else), nor
    for `pause_when_busy` seconds after it last was. Shared by all workers."""

    def __init__(self, kobold: KoboldAPI, settings: Settings, clock: Clock) -> None:
        self.kobold = kobold
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._busy_since: float | None = None  # while busy: when it was first seen busy
        self._last_busy = -math.inf

    def delay(self, ours: int) -> float:
        """Seconds to wait before popping (0: pop now)."""
        reason = self.kobold.busy(ours)
        now = self._clock()
        with self._lock:
            if reason:
                if self._busy_since is None:
                    log.info("no new jobs while the backend is busy: %s", reason)
                    self._busy_since = now
                self._last_busy = now
                return self.settings.interval
            remaining = self._last_busy + self.settings.pause_when_busy - now
            if remaining > 0:
                return min(remaining, self.settings.interval)
            if self._busy_since is not None:
                log.info("the backend is free again; taking jobs")
                self._busy_since = None
            return 0.0
