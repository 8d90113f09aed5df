"""A real browser (Debian's chromium, driven by Playwright) loads the status page of a live cluster.

Set KOBOLDCLUSTER_SCREENSHOT=docs/status.png to keep the screenshot (the README's picture).
"""

from __future__ import annotations

import math
import os
import re
import shutil
from datetime import timedelta

import pytest
import requests
from django.utils import timezone

from stats.models import WAIT_BOUNDS, MinuteRollup, RollupMark
from stats.rollups import floor_minute

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.e2e,
    # A developer's machine without it skips; CI, where ./test.sh installs it, never does.
    pytest.mark.skipif(
        CHROMIUM is None and os.environ.get("CI") != "true",
        reason="chromium is not installed (./test.sh installs it)",
    ),
]

SERVER = {"model": "tiny-llm", "max_length": 80, "max_content_length": 2048}
CONTRIBUTORS = {"ayla": 9, "brook": 6, "cosmo": 4, "dune": 2}


def yesterday_rolled_up() -> None:
    """24 hours of per-minute rows, as the rollup leaves them, for the charts to draw."""
    now = timezone.now()
    mark = floor_minute(now - timedelta(minutes=2))
    rows = []
    for i in range(1, 24 * 60):
        minute = mark - timedelta(minutes=i)
        wave = 1 + math.sin(i / 180)  # a day's rhythm
        for model, share in (("tiny-llm", 1.0), ("mythomax-13b", 0.6)):
            generations = round(6 * wave * share + (i % 7) / 3)
            buckets = [0] * (len(WAIT_BOUNDS) + 1)
            buckets[3 + round(2 * wave)] = generations  # busier, longer waits
            rows.append(
                MinuteRollup(
                    minute=minute, model=model, jobs=generations, generations=generations,
                    tokens=generations * 60, waits=generations, wait_buckets=buckets,
                )
            )  # fmt: skip
    MinuteRollup.objects.bulk_create(rows)
    RollupMark.objects.create(rolled_until=mark)


def traffic(url: str) -> None:
    """Prompts through the API, and four contributors' servers delivering some of them."""
    for i in range(30):
        body = {"prompt": f"private text {i}", "params": {"n": 1, "max_length": 40}}
        if i % 3:
            body["models"] = ["tiny-llm"]
        assert requests.post(f"{url}/generate/prompt", json=body, timeout=10).ok
    for name, jobs in CONTRIBUTORS.items():
        server = {**SERVER, "username": name, "password": f"{name}-pass", "name": f"{name}-gpu"}
        for _ in range(jobs):
            job = requests.post(f"{url}/generate/pop", json=server, timeout=10).json()["id"]
            done = {"id": job, "password": f"{name}-pass", "generation": "word " * 30}
            assert requests.post(f"{url}/generate/submit", json=done, timeout=10).ok
    requests.post(f"{url}/generate/pop", json={**server, "name": "dune-gpu-2"}, timeout=10)


def test_the_status_page_renders_in_chromium(cluster, tmp_path):
    from playwright.sync_api import sync_playwright

    yesterday_rolled_up()
    traffic(cluster.url)
    assert CHROMIUM, "chromium is not installed: ./test.sh installs it (apt-get, as root)"
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            response = page.goto(f"{cluster.url}/?refresh=2", wait_until="networkidle")
            assert response.status == 200

            # The charts are SVG with their data points.
            line = page.locator(
                'figure[data-chart="rate"] svg .series path.line'
            ).first.get_attribute("d")
            assert len(re.findall(r"[ML]?\s*[\d.]+[ ,][\d.]+", line)) >= 250  # 5-min bins, 24 h
            assert page.locator('figure[data-chart="waits"] svg .dots').count() > 50
            assert page.locator('figure[data-chart="tokens"] svg .rect').count() == 2
            contributors = page.locator('figure[data-chart="contributors"]').inner_text()
            assert all(name in contributors for name in CONTRIBUTORS)
            assert "private text" not in page.content()
            assert page.locator('[data-stat="servers-online"] b').inner_text() == "5"

            # It refreshes itself in place: new figures appear, the page is not reloaded.
            page.evaluate("window.stillHere = true")
            before = page.locator('[data-stat="generations-hour"] b').inner_text()
            server = {**SERVER, "username": "ayla", "password": "ayla-pass", "name": "ayla-gpu"}
            job = requests.post(f"{cluster.url}/generate/pop", json=server, timeout=10).json()
            done = {"id": job["id"], "password": "ayla-pass", "generation": "one more"}
            assert requests.post(f"{cluster.url}/generate/submit", json=done, timeout=10).ok
            page.wait_for_function(
                "before => document.querySelector('[data-stat=\"generations-hour\"] b')"
                ".textContent !== before",
                arg=before,
                timeout=15_000,
            )
            assert page.evaluate("window.stillHere") is True

            shot = tmp_path / "status.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            # On a phone: nothing wider than the screen (the models table scrolls by itself).
            page.set_viewport_size({"width": 390, "height": 844})
            assert page.evaluate("document.documentElement.scrollWidth") <= 390
            phone = tmp_path / "status-phone.png"
            page.screenshot(path=str(phone), full_page=True)
            if os.environ.get("KOBOLDCLUSTER_SCREENSHOT"):
                keep = os.environ["KOBOLDCLUSTER_SCREENSHOT"]
                shutil.copy(shot, keep)
                shutil.copy(phone, keep.removesuffix(".png") + "-phone.png")
        finally:
            browser.close()
    assert problems == []
