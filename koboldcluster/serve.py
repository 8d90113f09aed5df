"""The web server: uvicorn, run the way the cluster needs it (`scripts/web.sh` starts it).

    python -m koboldcluster.serve koboldcluster.asgi:application --host 0.0.0.0 --port 5001 ...

Why uvicorn (issue 27): it parses HTTP and runs the application on one thread, the event
loop's. granian parses on a Rust runtime thread, hands each request to a second thread that
schedules it on the loop, and takes the body and the answer back the same way: four to six
thread wake-ups per request, each a futex or a self-pipe write and a context switch, which on
this project's virtual machines cost more CPU than HTTP parsing in Python. Measured with the
project's command through HTTP (`manage.py benchmark --http`, docs/benchmarks.md "Through
HTTP"), a generation costs the web process about a fifth less CPU under uvicorn (7.05 / 7.82
against 5.57 / 6.00 ms, the two run in turn on one machine).

What uvicorn does not do, and the cluster's web server must (README, "Run the cluster"), this
module adds to uvicorn's own HTTP/1.1 protocol (`HttpToolsProtocol`, selected the documented
way, as `Config.http`):
- a time limit on a request's head (WEB_HEADER_TIMEOUT): a connection that sends nothing, or
  its request line and headers a byte at a time, is closed when it runs out, as an idle
  keep-alive connection is (uvicorn's `timeout_keep_alive`, set to the same);
- a cap on a head's size (WEB_HEADER_LIMIT bytes): a longer one is answered 400 and closed
  (uvicorn's answer to a request its parser refuses), not kept in memory.
The drain on SIGTERM and SIGINT goes in front of uvicorn's own graceful shutdown
(koboldcluster/shutdown.py, `chain_signal_handlers`).
"""

from __future__ import annotations

import argparse
import asyncio
import os

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors import Multiprocess

# Read from the environment (scripts/web.sh): uvicorn's worker processes are started fresh
# (multiprocessing's spawn) and import this module again, keeping no class attribute set here.
HEAD_TIMEOUT = float(os.environ.get("WEB_HEADER_TIMEOUT") or 10)
HEAD_LIMIT = int(os.environ.get("WEB_HEADER_LIMIT") or 64 * 1024)


class HeadTooLarge(Exception):
    """Raised in the parser's callback: uvicorn answers 400 and closes the connection."""


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with a time limit and a size cap on each request's head."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0
        super().connection_made(transport)
        self._await_head()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._await_head()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_done()
        super().on_headers_complete()

    def _await_head(self) -> None:
        if self._head_timer is None:
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT, self._head_too_slow)

    def _head_done(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > HEAD_LIMIT:
            raise HeadTooLarge(f"request head over {HEAD_LIMIT} bytes")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("app", help="The ASGI application, module:attribute.")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--workers", type=int, default=1, help="Web processes.")
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument(
        "--kill-timeout", type=int, default=10, help="Seconds a stopping process may take."
    )
    parser.add_argument(
        "--limit-concurrency", type=int, default=10000, help="Connections at once; then 503."
    )
    parser.add_argument(
        "--header-timeout", type=float, default=HEAD_TIMEOUT, help="Seconds for a request's head."
    )
    parser.add_argument(
        "--header-limit", type=int, default=HEAD_LIMIT, help="Bytes of a request's head."
    )
    parser.add_argument(
        "--access-log", action=argparse.BooleanOptionalAction, default=False,
        help="One line per request.",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    global HEAD_TIMEOUT, HEAD_LIMIT
    args = _arguments(argv)
    HEAD_TIMEOUT, HEAD_LIMIT = args.header_timeout, args.header_limit
    # For the worker processes, which read them when they import this module.
    os.environ["WEB_HEADER_TIMEOUT"], os.environ["WEB_HEADER_LIMIT"] = (
        str(HEAD_TIMEOUT), str(HEAD_LIMIT)
    )  # fmt: skip
    config = uvicorn.Config(
        args.app,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http=GuardedHttpToolsProtocol,
        ws="none",
        lifespan="off",
        interface="asgi3",
        backlog=args.backlog,
        limit_concurrency=args.limit_concurrency,
        timeout_keep_alive=max(1, round(HEAD_TIMEOUT)),
        timeout_graceful_shutdown=args.kill_timeout,
        access_log=args.access_log,
        # The client's address is the peer's: only the cluster decides which proxies it
        # trusts (TRUSTED_PROXIES, koboldcluster/clients.py).
        proxy_headers=False,
        server_header=False,
    )
    if args.workers > 1:  # uvicorn's supervisor: it starts a dead worker again
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    else:
        uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
