"""The least an application can do behind the cluster's web server: the serving layer's floor.

`benchmarks/scripts/bench_serving_floor.py` serves this under `scripts/web.sh` (uvicorn, the
cluster's flags) and measures the web server's CPU per request: what any request costs before
the application does anything of its own. It reads a POST's body as the cluster's handler does
(one `receive()`), answers a small JSON object in two `send()`s, as the direct lane does, and
nothing else: no Django, no database. Never served by the cluster.
"""

from __future__ import annotations

from typing import Any

ANSWER = b'{"id": "00000000-0000-0000-0000-000000000000", "kudos": 0}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        await receive()
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
