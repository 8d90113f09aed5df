"""Where a job's text so far is kept (see generations/progress.py): never the database.

With `REDIS_URL`, in Redis (Django's cache) for PROGRESS_TTL_SECONDS, so a stream on any node
reads it; without, in a file per prompt in the var dir, so every web process of this machine
reads it. One entry per prompt (the latest text of its generating job); a stale entry
expires by itself.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path

from django.conf import settings
from django.core.cache import cache

from koboldcluster.var_folders import VarFolder

# A progress older than this is forgotten (a bridge posts every 0.1 s while it generates).
PROGRESS_TTL_SECONDS = 60


def progress_store(*, prompt_id: object, job_id: object, text: str) -> None:
    value = f"{job_id}\n{text}"
    if settings.REDIS_URL:
        cache.set(_cache_key(prompt_id), value, timeout=PROGRESS_TTL_SECONDS)
        return
    path = _file(prompt_id)
    spare = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    # Bytes, not text mode: reading text translates "\r" and "\r\n" to "\n", and a stream
    # would then not add up to the stored generation.
    content = value.encode("utf-8")
    try:
        spare.write_bytes(content)
    except FileNotFoundError:  # the directory was removed meanwhile: make it again
        _FOLDER.forget()
        spare = _file(prompt_id).with_name(spare.name)
        spare.write_bytes(content)
    os.replace(spare, path)  # readers see the old text or the new one, never half of it


def progress_text(prompt_id: object) -> tuple[str, str] | None:
    """(job id, text so far) of the prompt's generating job, or None."""
    redis = bool(settings.REDIS_URL)
    value = cache.get(_cache_key(prompt_id)) if redis else _read_file(_file(prompt_id))
    if value is None:
        return None
    job_id, _, text = value.partition("\n")
    return job_id, text


def progress_drop(prompt_id: object) -> None:
    """The job ended (submitted or faulted): its progress is no longer wanted."""
    if settings.REDIS_URL:
        cache.delete(_cache_key(prompt_id))
    else:
        with contextlib.suppress(FileNotFoundError):
            _file(prompt_id).unlink()


def _cache_key(prompt_id: object) -> str:
    return f"progress:{prompt_id}"


_FOLDER = VarFolder("progress")


def _file(prompt_id: object) -> Path:
    return _FOLDER.path() / str(uuid.UUID(str(prompt_id)))


def _read_file(path: Path) -> str | None:
    try:
        stale = time.time() - path.stat().st_mtime > PROGRESS_TTL_SECONDS
        if stale:
            path.unlink()
            return None
        return path.read_bytes().decode("utf-8")  # exactly as stored (progress_store)
    except FileNotFoundError:
        return None


def progress_sweep() -> int:
    """Remove stale progress files (of jobs reaped without a submit); how many."""
    if settings.REDIS_URL:
        return 0  # Redis expires them
    return _FOLDER.sweep(PROGRESS_TTL_SECONDS)
