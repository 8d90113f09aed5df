"""What the worker loop is given (`bridge/worker.py`): its settings, the backend it drives, and
the clock every part of the bridge reads."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bridge.kobold import (
    Generation,
    ModelInfo,
    OnText,
)
from bridge.retry import Backoff

# Seconds on a monotonic scale. `Bridge` is the one place it is chosen (`time.monotonic`
# unless a test injects another); every other part gets it from there, so that no time read
# from one clock is ever compared with a time read from another.
Clock = Callable[[], float]


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
