"""The bridge's counters, shared by every worker thread, and the summary it logs of them."""

from __future__ import annotations

import threading
from datetime import timedelta

from bridge.contracts import Clock


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
