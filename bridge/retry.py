"""Exponential backoff with jitter, shared by every retry towards the cluster and KoboldAI."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Delays that double after each consecutive failure, up to `cap` seconds.

    "Equal jitter": each delay is drawn between half and all of its exponential ceiling, so it
    never collapses to zero (no hammering) while many bridges that lost the cluster at the same
    moment still spread their reconnections apart.
    """

    def __init__(
        self, base: float = 1.0, cap: float = 60.0, rng: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng

    def delay(self, failures: int) -> float:
        """Seconds to wait after `failures` consecutive failures (1 for the first)."""
        # The exponent is bounded so a long outage cannot overflow the float.
        ceiling = min(self.cap, self.base * 2 ** min(max(failures, 1) - 1, 32))
        return ceiling / 2 + self._rng() * ceiling / 2
