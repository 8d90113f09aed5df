"""The original cluster README's curl session, end to end through the API."""

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
