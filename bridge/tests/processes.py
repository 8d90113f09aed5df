"""Helpers for tests that run the bridge (and its doubles) as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class Process:
    """A child process whose output lines (stdout and stderr together) are collected live."""

    def __init__(self, args: Sequence[str], *, cwd: Path, env: Mapping[str, str]) -> None:
        self.args = list(args)
        self.popen = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            bufsize=1,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 15.0, count: int = 1) -> str:
        """The first line containing `text`, once `count` such lines exist. Fails on timeout
        or if the process ends first."""

        def matching() -> list[str]:
            return [line for line in list(self.lines) if text in line]

        self.wait_until(lambda: len(matching()) >= count, f"{count} line(s) with {text!r}", timeout)
        return matching()[0]

    def wait_until(self, condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.popen.poll() is not None:
                self._reader.join(2)
                if condition():
                    return
                raise AssertionError(
                    f"process ended ({self.popen.returncode}) before {what}:\n{self.output}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.output}")
            time.sleep(0.02)

    def interrupt(self) -> None:
        """Ctrl-C, as a terminal sends it."""
        self.popen.send_signal(signal.SIGINT)

    def wait(self, timeout: float = 15.0) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self) -> None:
        """Teardown: end the process whatever its state."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._reader.join(5)


def bridge_env(**settings: object) -> dict[str, str]:
    """The environment for a bridge process: this one without any BRIDGE_* a developer may have
    set, plus `settings` (BRIDGE_INTERVAL=0.1 ...), with the repository importable."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BRIDGE_")}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    env.update({key: str(value) for key, value in settings.items()})
    return env


def start_bridge(cwd: Path, *args: str, **settings: object) -> Process:
    """`python -m bridge ARGS` in `cwd` (so no stray bridgeData.toml is read)."""
    return Process([sys.executable, "-m", "bridge", *args], cwd=cwd, env=bridge_env(**settings))


def start_kai_double(cwd: Path, *args: str) -> tuple[Process, str]:
    """`python -m bridge.tests.kai_double ARGS` on a free port; returns it and its URL."""
    process = Process(
        [sys.executable, "-m", "bridge.tests.kai_double", *args],
        cwd=cwd,
        env=bridge_env(),
    )
    line = process.wait_for("FakeKoboldAI listening on", timeout=10)
    return process, line.rsplit(" ", 1)[1]
