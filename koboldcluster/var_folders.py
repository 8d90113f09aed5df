"""Folders that the web processes of one machine share (without Redis): the progress texts
of streams, the liveness marks of jobs. They live in KOBOLDCLUSTER_TRANSIENT_DIR, by default
the var dir."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from django.conf import settings


class VarFolder:
    """`<transient dir>/<name>`, made (readable by this user only) once per process and directory: a
    mkdir on every use was a twentieth of a submit's CPU. `forget` has it made again on the
    next use, after it was found removed. The directory is read from the settings on every
    use: tests give each test process (and the servers it starts) its own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._made: dict[str, Path] = {}

    def path(self) -> Path:
        configured = settings.KOBOLDCLUSTER.get("TRANSIENT_DIR") or str(settings.VAR_DIR)
        folder = self._made.get(configured)
        if folder is None:
            folder = Path(configured) / self.name
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._made[configured] = folder
        return folder

    def forget(self) -> None:
        self._made.clear()

    def sweep(self, older_than: float) -> int:
        """Remove the files not written for `older_than` seconds; how many (the folder is
        made again first if it was removed)."""
        self.forget()
        removed = 0
        for entry in self.path().iterdir():
            with contextlib.suppress(FileNotFoundError):
                if time.time() - entry.stat().st_mtime > older_than:
                    entry.unlink()
                    removed += 1
        return removed
