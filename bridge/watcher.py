"""What the backend serves and what the bridge may advertise: its model and limits, re-read
periodically and capped by the owner's settings. Shared by all worker threads."""

from __future__ import annotations

import logging
import math
import threading
from typing import TYPE_CHECKING

from bridge.cluster import Capabilities
from bridge.kobold import KoboldError, ModelInfo

if TYPE_CHECKING:
    from bridge.contracts import Clock, KoboldAPI, Settings

log = logging.getLogger("bridge")


def room_for_prompt(context: int) -> int:
    """The most new tokens to advertise for `context`: half of it, so that a prompt always
    has the other half (at least 1)."""
    return max(context // 2, 1)


class ModelWatcher:
    """The backend's current model and limits, re-read every `refresh_interval` seconds because
    the contributor may load another model while the bridge runs. Shared by all workers."""

    def __init__(
        self,
        kobold: KoboldAPI,
        settings: Settings,
        clock: Clock,
    ) -> None:
        self.kobold = kobold
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._info: ModelInfo | None = None  # the last model the backend reported
        self._fresh = False  # whether _info may be used for the next pop
        self._checked = -math.inf
        self._down = False
        self._warned: set[tuple[str, int, int]] = set()
        self.last: Capabilities | None = None  # what the latest pop advertised

    def capabilities(self) -> Capabilities:
        """What to advertise in the next pop. Raises KoboldError while KoboldAI is unusable."""
        with self._lock:
            stale = self._clock() - self._checked >= self.settings.refresh_interval
            if not self._fresh or stale:
                self._refresh()
            assert self._info is not None
            self.last = self._limit(self._info)
            return self.last

    def invalidate(self) -> None:
        """KoboldAI just failed: check it again before popping another job."""
        with self._lock:
            self._fresh = False

    def _refresh(self) -> None:
        try:
            info = self.kobold.model_info()
        except KoboldError as error:
            # No pops until KoboldAI answers again: we could not serve the jobs.
            self._fresh = False
            if self._info is not None and not self._down:
                log.warning("no new jobs until %s is back: %s", self.kobold.label, error)
            self._down = True
            raise
        previous, was_down = self._info, self._down
        self._info, self._fresh, self._down, self._checked = info, True, False, self._clock()
        if previous is None:
            how = "serves"
        elif was_down:
            how = "is back, serving"
        elif info != previous:
            how = "now serves"
        else:
            return
        log.info(
            "%s %s %s (max_length %d, max_context_length %d)",
            self.kobold.label,
            how,
            self.settings.model_name or info.cluster_name,
            info.max_length,
            info.max_context_length,
        )

    def _limit(self, info: ModelInfo) -> Capabilities:
        """The owner's --max-length and --max-context-length, never above what the backend
        allows. A backend that does not report its context gets the owner's word for it.

        max_length is at most half the context (`room_for_prompt`): the cluster hands a
        server jobs up to the max_length it advertises, and a job that takes the whole
        context leaves none for its prompt (a 512-token context advertised 512)."""
        wanted_context = self.settings.max_context_length
        if info.limits_known or wanted_context is None:
            context = self._capped("--max-context-length", wanted_context, info.max_context_length)
            ceiling = min(info.max_length_ceiling or info.max_length, room_for_prompt(context))
        else:
            context, ceiling = wanted_context, room_for_prompt(wanted_context)
        if self.settings.max_length is None:
            length = min(info.max_length, room_for_prompt(context))
        else:
            length = self._capped("--max-length", self.settings.max_length, ceiling)
        return Capabilities(self.settings.model_name or info.cluster_name, length, context)

    def _capped(self, flag: str, override: int | None, allowed: int) -> int:
        if override is None:
            return allowed
        if override > allowed and (flag, override, allowed) not in self._warned:
            self._warned.add((flag, override, allowed))
            log.warning(
                "%s %d is above what %s allows (%d); using %d",
                flag,
                override,
                self.kobold.label,
                allowed,
                allowed,
            )
        return min(override, allowed)
