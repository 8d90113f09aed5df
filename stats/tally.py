"""Counts for one period and model, added up in Python (rollup rows, live rows, or both)."""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass, field, fields

from stats.models import WAIT_BOUNDS, Counts, empty_buckets

SCALARS = ("prompts", "jobs", "generations", "tokens", "faulted", "abandoned", "waits")


@dataclass
class Tally:
    prompts: int = 0
    jobs: int = 0
    generations: int = 0
    tokens: int = 0
    faulted: int = 0
    abandoned: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    wait_buckets: list[int] = field(default_factory=empty_buckets)

    @classmethod
    def of(cls, row: Counts) -> Tally:
        return cls(**{f.name: getattr(row, f.name) for f in fields(cls)})

    @property
    def faults(self) -> int:
        return self.faulted + self.abandoned

    def add(self, other: Tally) -> Tally:
        for name in SCALARS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.wait_seconds += other.wait_seconds
        self.wait_buckets = [
            a + b for a, b in zip(self.wait_buckets, other.wait_buckets, strict=True)
        ]
        return self

    def add_wait(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.waits += 1
        self.wait_seconds += seconds
        self.wait_buckets[bisect_left(WAIT_BOUNDS, seconds)] += 1

    def fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def median_wait(self) -> float | None:
        """The median of the waits, interpolated inside its bucket; None without waits."""
        return quantile(self.wait_buckets, 0.5)


def quantile(buckets: list[int], q: float) -> float | None:
    """The q-quantile of values counted in WAIT_BOUNDS buckets, as Prometheus estimates it."""
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(buckets):
        if count and seen + count >= rank:
            if index == len(WAIT_BOUNDS):
                return float(WAIT_BOUNDS[-1])  # beyond the last bound: say the bound
            low = WAIT_BOUNDS[index - 1] if index else 0.0
            return low + (WAIT_BOUNDS[index] - low) * (rank - seen) / count
        seen += count
    return float(WAIT_BOUNDS[-1])


def total(tallies: dict) -> Tally:
    result = Tally()
    for tally in tallies.values():
        result.add(tally)
    return result
