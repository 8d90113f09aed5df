"""The status page at `/` and its live part: the numbers on it are the database's."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone

from generations.models import Job, Prompt
from servers.models import Server
from stats.rollups import stats_rollup

pytestmark = pytest.mark.django_db


def stat(html: str, name: str) -> str:
    found = re.search(rf'data-stat="{name}"><b>([^<]*)</b>', html)
    assert found, name
    return found.group(1).replace("\u2009", "")


@pytest.fixture
def busy(api, submit_prompt, pop, submit_generation) -> dict:
    """Two servers, prompts waiting, jobs in progress and delivered, an hour-old generation."""
    for i in range(3):
        submit_prompt(f"secret prompt {i}", models=["tiny-llm"], params={"n": 2, "max_length": 16})
    submit_prompt("any model will do", params={"n": 1, "max_length": 16})
    first = pop("bob-1").json()["id"]
    second = pop("bob-2", model="other-llm", max_length=80).json()
    submit_generation(first, text="x" * 40)  # 10 tokens
    again = pop("bob-1").json()["id"]
    submit_generation(again, text="y" * 20)  # 5 tokens
    pop("bob-1")  # in progress
    # An older generation, already rolled up.
    now = timezone.now()
    old = Prompt.objects.create(
        user=Prompt.objects.first().user, text="old", n=1, waiting=0, max_length=16,
        max_context_length=1024, sort_key=0, created=now - timedelta(minutes=50),
        expires_at=now + timedelta(minutes=5),
    )  # fmt: skip
    Job.objects.create(
        prompt=old, server=Server.objects.get(name="bob-1"), model="tiny-llm",
        state=Job.State.DONE, text="z", tokens=7, started=now - timedelta(minutes=49),
        finished=now - timedelta(minutes=48), deadline=now,
    )  # fmt: skip
    stats_rollup(now=now)
    return {"second": second}


def test_the_page_shows_the_databases_numbers(api, busy):
    html = api.get("/").content.decode()
    now = timezone.now()

    assert stat(html, "servers-online") == str(Server.objects.active(now).count()) == "2"
    assert stat(html, "models-online") == "2"  # tiny-llm and other-llm
    assert stat(html, "prompts-waiting") == str(Prompt.objects.queued(now).count())
    processing = Job.objects.filter(state="processing").count()
    assert stat(html, "jobs-in-progress") == str(processing) == "2"
    done = Job.objects.filter(state="done")
    assert stat(html, "generations-hour") == str(done.count()) == "3"
    assert stat(html, "tokens-hour") == str(sum(done.values_list("tokens", flat=True))) == "22"
    assert stat(html, "generations-day") == "3"
    assert stat(html, "median-wait-hour") != "–"
    assert "secret prompt" not in html and "xxxx" not in html


def test_the_models_table_has_servers_threads_and_queue(api, busy):
    html = api.get("/").content.decode()

    row = re.search(r'<tr data-model="tiny-llm">(.*?)</tr>', html).group(1)
    cells = re.findall(r"<td>([^<]*)</td>", row)
    assert cells[:4] == ["tiny-llm", "1", "1", "4"]  # 3 slots waiting, 1 job in flight


def test_the_servers_table_shows_trust_pause_success_and_speed_but_no_text(api, busy):
    from servers.suspicion import server_pause

    server_pause(server=Server.objects.get(name="bob-2"), reason="a test reason")
    html = api.get("/").content.decode()

    row = lambda name: re.findall(  # noqa: E731
        r"<td>([^<]*)</td>", re.search(rf'<tr data-server="{name}">(.*?)</tr>', html).group(1)
    )
    working, paused = row("bob-1"), row("bob-2")
    speed = Server.objects.get(name="bob-1").speed
    assert working == ["bob-1", "tiny-llm", "no", "working", "100 %", f"{round(speed, 1)} tokens/s"]
    assert paused[:5] == ["bob-2", "other-llm", "no", "paused: a test reason", "—"]
    assert html.index('data-server="bob-2"') < html.index('data-server="bob-1"')  # paused first
    assert "secret prompt" not in html and "xxxx" not in html


def test_the_charts_are_svg_drawn_by_the_server(api, busy):
    html = api.get("/").content.decode()

    for chart in ("rate", "waits", "tokens", "contributors"):
        figure = re.search(rf'<figure data-chart="{chart}">(.*?)</figure>', html, re.S).group(1)
        assert figure.startswith("<svg") and "viewBox" in figure
    assert "bob" in re.search(r'data-chart="contributors">(.*?)</figure>', html, re.S).group(1)
    assert "<script" not in html.replace('<script src="/static/stats/status.js" defer>', "")
    # Nothing is loaded from elsewhere (the SVG namespaces are names, not downloads).
    assert not re.search(r"(https?:)?//", re.sub(r'xmlns(:xlink)?="[^"]*"', "", html))


def test_the_live_part_is_the_page_without_its_frame(api, busy):
    live = api.get("/status/live")

    assert live.status_code == 200
    assert live["Cache-Control"] == "no-store"
    html = live.content.decode()
    assert "<html" not in html and 'data-stat="servers-online"' in html


def test_an_empty_cluster_says_how_to_join(api, db):
    html = api.get("/").content.decode()

    assert stat(html, "servers-online") == "0"
    assert stat(html, "median-wait-hour") == "–"
    assert 'href="/readme#join-the-cluster"' in html
    assert 'href="/register"' in html and 'href="/api/"' in html


def test_the_script_and_the_readme_are_served(api, db):
    assert api.get("/static/stats/status.js").status_code == 200
    readme = api.get("/readme").content.decode()
    assert 'id="join-the-cluster"' in readme


def test_the_readme_page_holds_the_docs_pages_and_every_link_on_it_lands(api, db):
    """The status page links sections that live in docs/ (Trust and quality); /readme serves
    the README with the docs/ pages it links, their links turned into anchors of the page."""
    page = api.get("/readme").content.decode()
    ids = set(re.findall(r'id="([^"]+)"', page))
    targets = re.findall(r'href="#([^"]+)"', page)

    assert {"join-the-cluster", "trust-and-quality", "configuration", "privacy"} <= ids
    assert len(targets) > 50
    assert [target for target in targets if target not in ids] == []
    assert re.findall(r'href="[^"#]*\.md[^"]*"', page) == []
