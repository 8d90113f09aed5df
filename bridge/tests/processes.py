"""Helpers for tests that run the bridge (and its doubles) as real processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import requests

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(
    condition: Callable[[], Any], what: str, timeout: float = 30.0, watch: Sequence[Process] = ()
) -> Any:
    """Poll `condition()` until it is truthy and return it. Fails after `timeout` seconds, or
    at once if one of the `watch` processes has ended (its output goes in the message)."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        for process in watch:
            if process.popen.poll() is not None:
                raise AssertionError(
                    f"{process.args[2]} ended ({process.popen.returncode}) before {what}:\n"
                    f"{process.output}"
                )
        if time.monotonic() > deadline:
            outputs = "\n".join(process.output for process in watch)
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{outputs}")
        time.sleep(0.05)


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


class KaiDoubleProcess:
    """FakeKoboldAI (the test double of KoboldAI) as a real process on a fixed free port, so it
    can crash (`kill`) and come back (`start` again) where the bridge expects it."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.cwd = cwd
        self.args = list(args)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: Process | None = None

    def start(self) -> KaiDoubleProcess:
        self.process = Process(
            [sys.executable, "-m", "bridge.tests.kai_double", "--port", str(self.port), *self.args],
            cwd=self.cwd,
            env=bridge_env(),
        )
        try:
            self.process.wait_for("FakeKoboldAI listening on", timeout=60)
        except BaseException:
            self.process.stop()  # a failed start must not outlive the test
            raise
        return self

    def control(self, **changes: Any) -> dict[str, Any]:
        """Change the double's behaviour at run time (busy_next=3, delay=1.0, ...)."""
        response = requests.post(f"{self.url}/_double/control", json=changes, timeout=5)
        response.raise_for_status()
        return response.json()

    def state(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/_double/state", timeout=5).json()

    def kill(self) -> None:
        """Crash: SIGKILL, so every connection is cut without an answer."""
        if self.process is not None:
            self.process.popen.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
