"""Fixtures for tests that run the bridge and FakeKoboldAI as real processes. With the root
conftest's `cluster` fixture (the cluster under gunicorn) they make the end-to-end tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.tests.processes import KaiDoubleProcess, Process, start_bridge

# Retries and refreshes in tenths of a second, so outages and recoveries take moments.
FAST_BRIDGE = {
    "BRIDGE_INTERVAL": "0.1",
    "BRIDGE_BACKOFF_BASE": "0.1",
    "BRIDGE_BACKOFF_MAX": "0.5",
    "BRIDGE_REFRESH_INTERVAL": "1",
}


@pytest.fixture
def kai_double(tmp_path: Path) -> Iterator[Callable[..., KaiDoubleProcess]]:
    """A factory: `kai_double("--delay", "0.5")` starts FakeKoboldAI as a process."""
    started: list[KaiDoubleProcess] = []

    def start(*args: str) -> KaiDoubleProcess:
        double = KaiDoubleProcess(tmp_path, *args).start()
        started.append(double)
        return double

    yield start
    for double in started:
        double.stop()


@pytest.fixture
def bridge_process(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    """A factory: `bridge_process("--kai-url", url, ..., BRIDGE_THREADS="2")` starts
    `python -m bridge` with fast retries; every one started is ended at teardown."""
    started: list[Process] = []

    def start(*args: str, **env: str) -> Process:
        process = start_bridge(tmp_path, *args, **{**FAST_BRIDGE, **env})
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
