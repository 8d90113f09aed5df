"""The serving layer's floor (benchmarks/scripts/bench_serving_floor.py): the script serves the
do-nothing application under scripts/web.sh and reads a cost per GET and POST. No timing is
asserted beyond its being a measurement at all."""

from __future__ import annotations

import asyncio
import importlib.util
from pathlib import Path

import httpx
import pytest

from benchmarks import floor_app

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_serving_floor.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_serving_floor", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_floor_app_reads_the_body_and_answers_json():
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=floor_app.application)
        async with httpx.AsyncClient(transport=transport, base_url="http://floor") as client:
            return await client.post("/", json={"prompt": "Hello"})

    answer = asyncio.run(main())
    assert answer.status_code == 200
    assert answer.json()["kudos"] == 0


@pytest.mark.e2e
def test_the_script_measures_the_web_server_serving_the_floor_app():
    floor = _script().measure(requests_per_kind=200, repeat=1)

    assert set(floor) == {"GET", "POST"}
    # /proc counts in 10 ms ticks: 200 requests of at least 0.05 ms each show; none costs 50.
    assert all(0 < cost < 50 for cost in floor.values()), floor
