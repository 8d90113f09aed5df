"""The original cluster README's curl session, and our README's, end to end through the API."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from accounts.models import User

pytestmark = pytest.mark.django_db


def test_the_original_readme_session(api):
    request = {
        "prompt": "I entered into an argument with a clown",
        "params": {"max_length": 16, "frmttriminc": True, "n": 2},
        "username": "db0",
        "models": ["KoboldAI/fairseq-dense-13B-Nerys-v2"],
    }
    prompt_id = api.post("/generate/prompt", request, format="json").json()["id"]

    servers = [
        ("Db0's Awesome Instance", "db0-server", " as he stood before me.", 1632),
        ("Henk's Instance", "henk", " as she stood before me", 2048),
    ]
    texts = {}
    for name, owner, text, context in servers:
        popped = api.post(
            "/generate/pop",
            {
                "username": owner,
                "password": f"{owner}-password",
                "name": name,
                "model": "KoboldAI/fairseq-dense-13B-Nerys-v2",
                "max_length": 80,
                "max_content_length": context,
            },
            format="json",
        ).json()
        assert popped["payload"] == {
            "prompt": "I entered into an argument with a clown",
            "n": 1,
            "max_length": 16,
            "max_context_length": 1024,
            "frmttriminc": True,
        }
        texts[owner] = text
        reward = api.post(
            "/generate/submit",
            {"id": popped["id"], "password": f"{owner}-password", "generation": texts[owner]},
            format="json",
        ).json()
        assert reward == {"reward": 6}

    status = api.get(f"/generate/prompt/{prompt_id}").json()
    assert status["finished"] == 2
    assert status["done"] is True
    assert sorted(status["generations"]) == sorted(texts.values())

    listed = api.get("/servers").json()
    assert [s["name"] for s in listed] == ["Db0's Awesome Instance", "Henk's Instance"]
    assert all(s["tokens_generated"] == 6 and s["requests_fulfilled"] == 1 for s in listed)
    assert api.get("/usage").json() == {"db0": 12}
    assert api.get("/contributions").json() == {"db0-server": 6, "henk": 6}
    assert User.objects.get(username="db0").kind == User.Kind.UNCLAIMED


README = Path(__file__).resolve().parents[2] / "README.md"
BASE = "http://127.0.0.1:5001"


def readme_session() -> list[tuple[list[str], str]]:
    """The curl examples of README's "The cluster API" section, in order: (argv, answer)."""
    text = README.read_text()
    section = text[text.index("## The cluster API") : text.index("### Other endpoints")]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    session = []
    for block in blocks:
        command, answer = block.strip().split("\n")
        session.append((shlex.split(command), answer))
    return session


def run_curl(api, argv: list[str]):
    """Run a curl command line of the README through the test client, as curl would send it."""
    assert argv[0] == "curl"
    headers, body, url = {}, None, None
    args = iter(argv[1:])
    for arg in args:
        if arg == "-H":
            name, value = next(args).split(": ", 1)
            headers[f"HTTP_{name.upper().replace('-', '_')}"] = value
        elif arg == "-d":
            body = next(args)
        else:
            url = arg
    assert url.startswith(BASE), url
    path = url.removeprefix(BASE)
    if body is None:
        return api.get(path, **headers)
    # curl -d without -H sends application/x-www-form-urlencoded; the cluster reads JSON anyway.
    content_type = headers.pop("HTTP_CONTENT_TYPE", "application/x-www-form-urlencoded")
    return api.generic("POST", path, body, content_type=content_type, **headers)


def test_the_readme_curl_examples_are_one_session_that_works_in_order(api):
    """Pasted in order, each example gets the answer the README shows (with real ids)."""
    session = readme_session()
    assert [argv[-1].removeprefix(BASE).split("/")[2] for argv, _ in session] == [
        "prompt",
        "prompt",
        "pop",
        "submit",
        "prompt",
    ]
    real_ids: dict[str, str] = {}
    for argv, shown in session:
        for shown_id, real_id in real_ids.items():
            argv = [arg.replace(shown_id, real_id) for arg in argv]
        response = run_curl(api, argv)
        answer = response.json()
        assert response.status_code == 200, (argv, answer)
        expected = json.loads(shown.replace("…", ""))
        if isinstance(expected.get("id"), str):
            real_ids[json.loads(shown)["id"]] = answer["id"]
            expected["id"] = answer["id"]
        assert answer == expected, argv

    # Pasting the client's example again works too: the pop did not take alice's name.
    prompt, _ = session[0]
    assert run_curl(api, prompt).status_code == 200
