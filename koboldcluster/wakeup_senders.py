"""How a wake-up leaves this process (`koboldcluster/wakeups.py`): published on Redis with
`REDIS_URL`, else one Unix datagram to each listening process of this machine, whose sockets
are in one directory (`socket_dir`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
import uuid
from pathlib import Path

from django.conf import settings

MAX_DATAGRAM = 1024
SENDER = uuid.uuid4().hex[:12]  # this process, so it ignores its own broadcasts

_redis_client = None
_sender_socket: socket.socket | None = None


def redis_channel() -> str:
    database = settings.DATABASES["default"]
    return f"koboldcluster:wakeups:{database.get('HOST') or ''}:{database['NAME']}"


def redis_publish(topic: str) -> None:
    global _redis_client
    if _redis_client is None:
        import redis

        _redis_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1)
    _redis_client.publish(redis_channel(), f"{SENDER} {topic}")


_socket_dirs: dict[str, Path] = {}


def socket_dir() -> Path:
    """Where listening processes keep their sockets (short: a socket path has ≤ 107 bytes).
    Made once per process and setting: every notification reads it."""
    configured = str(
        settings.KOBOLDCLUSTER.get("WAKEUP_SOCKET_DIR") or settings.VAR_DIR / "wakeups"
    )
    directory = _socket_dirs.get(configured)
    if directory is None:
        directory = Path(configured)
        if len(configured) > 60:
            digest = hashlib.sha256(configured.encode()).hexdigest()[:16]
            directory = Path(tempfile.gettempdir()) / f"koboldcluster-wakeups-{digest}"
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        _socket_dirs[configured] = directory
    return directory


def datagram_broadcast(topic: str, own: set[str | None]) -> None:
    global _sender_socket
    if _sender_socket is None:
        _sender_socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        _sender_socket.setblocking(False)
    data = topic.encode()[:MAX_DATAGRAM]
    try:
        entries = list(os.scandir(socket_dir()))
    except FileNotFoundError:  # removed meanwhile, with every socket in it: nobody to tell
        _socket_dirs.clear()
        return
    for entry in entries:
        if entry.path in own or not entry.name.endswith(".sock"):
            continue
        try:
            _sender_socket.sendto(data, entry.path)
        except (ConnectionRefusedError, FileNotFoundError):
            # Its process is gone: the socket file stays behind until someone removes it.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
        except (BlockingIOError, OSError):
            pass  # its buffer is full (a busy process): the re-check catches up
