"""Inputs and faults that were 500s on the front-end faces and the held pop (issue 23, 7)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any

import pytest
from django.db import OperationalError

from generations import long_poll
from generations.models import Prompt
from generations.tests.test_long_poll import bob_and_alice, create_prompt, run, timed_pop
from koboldcluster.testing import BASE_DIR

__all__ = ["bob_and_alice"]  # the fixture, used below

TEXTS = {"lone surrogate": "Hi \ud800 there", "NUL": "Hi \x00 there"}


def post_json(api: Any, path: str, body: dict[str, Any]) -> Any:
    """JSON as a client writes it: `\\ud800` escaped (a lone surrogate has no UTF-8)."""
    return api.post(path, data=json.dumps(body), content_type="application/json")


@pytest.mark.django_db
@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
@pytest.mark.parametrize("face", ["completions", "chat"])
def test_text_no_database_can_store_is_400(api, text, face):
    if face == "chat":
        path, body = "/v1/chat/completions", {"messages": [{"role": "user", "content": text}]}
    else:
        path, body = "/v1/completions", {"prompt": text}
    response = post_json(api, path, body)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["param"] in ("prompt", "messages")
    assert not Prompt.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("text", TEXTS.values(), ids=TEXTS.keys())
def test_text_no_database_can_store_is_400_on_the_kobold_face(api, text):
    response = post_json(api, "/api/v1/generate", {"prompt": text})
    assert response.status_code == 400, response.content
    assert not Prompt.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_database_lost_while_a_pop_is_held_is_503(bob_and_alice, monkeypatch):
    _, alice = bob_and_alice

    def lost(attempt: Any) -> Any:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(long_poll, "_try_and_release", lost)

    async def main() -> tuple:
        waiting = asyncio.create_task(timed_pop("bob-1", wait=20))
        await asyncio.sleep(0.5)  # held: the next try comes with the prompt's wake-up
        await create_prompt(alice)
        return await waiting

    _, status, body = run(main)
    assert (status, body["rc"]) == (503, "DatabaseUnavailable")


def test_a_metrics_folder_not_made_yet_is_made(tmp_path):
    folder = tmp_path / "not" / "yet"
    code = "from koboldcluster import metrics"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder), "DJANGO_SETTINGS_MODULE": "x"}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=BASE_DIR, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert folder.is_dir()
