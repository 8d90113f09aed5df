"""Every error is JSON `{"message", "rc"}`: Django's own 404/405/500 included."""

import pytest

pytestmark = pytest.mark.django_db


def test_unknown_path_is_a_json_404(client):
    response = client.get("/no/such/path")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"message": "Not found.", "rc": "NotFound"}


def test_trailing_slash_is_not_redirected(client):
    assert client.post("/generate/prompt/", {}).status_code == 404


def test_wrong_method_is_a_json_405(api):
    response = api.put("/usage")

    assert response.status_code == 405
    assert response.json()["rc"] == "MethodNotAllowed"


def test_a_bug_is_a_json_500_without_a_trace(api, monkeypatch):
    def explode(**kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr("accounts.api.original.views.tokens_by_username", lambda field: explode())
    api.raise_request_exception = False

    response = api.get("/usage")

    assert response.status_code == 500
    assert response.json() == {"message": "Internal server error.", "rc": "InternalServerError"}
    assert "secret internals" not in response.content.decode()
