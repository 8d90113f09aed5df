"""Ratings: the requester rates a generation through any face while the request lives; a
stranger is refused; ratings count in the server's record and can pause it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import RequestFactory

from accounts.identity import anonymous_user
from generations.delivery import job_submit
from generations.intake import GenerationRequest, prompt_create
from generations.models import Job, Prompt
from koboldcluster import clients
from servers.models import Server
from servers.records import record_rating
from servers.services import Credentials
from servers.suspicion import servers_review
from servers.tests.volunteers import volunteer

pytestmark = pytest.mark.django_db

V2 = "/api/v2/generate/text"


@pytest.fixture
def served(api):
    """Serve a request sent (anonymously, from 127.0.0.1) through the v2 API; its id."""

    def send(n: int = 1, **headers: str) -> str:
        body = {"prompt": "Tell me a story", "params": {"n": n, "max_length": 16}}
        body.update(headers.pop("body", {}))
        prompt_id = api.post(
            f"{V2}/async", body, format="json", **{"HTTP_APIKEY": "0000000000", **headers}
        ).json()["id"]
        server = volunteer("rated")
        for i in range(n):
            job = server.pop(queue=False)
            server.tick(1)
            job_submit(
                job_id=job.id,
                credentials=Credentials(api_user=server.owner),
                text=f" a story {i}",
                now=server.now,
            )
        return prompt_id

    return send


def test_the_requester_rates_a_generation_and_the_server_counts_it(api, served, register):
    _, key = register("reader")
    prompt_id = served(HTTP_APIKEY=key)
    response = api.post(
        f"{V2}/rate/{prompt_id}",
        {"rating": "bad", "reason": "it made no sense"},
        format="json",
        HTTP_APIKEY=key,
    )
    assert response.status_code == 200, response.json()
    assert response.json() == {"rating": "bad", "generations": [0]}
    job = Job.objects.get()
    assert (job.rating, job.rating_reason) == ("bad", "it made no sense")
    server = Server.objects.get(name="rated")
    assert (server.rec_good, server.rec_bad) == (0, 1)
    # Once only.
    again = api.post(f"{V2}/rate/{prompt_id}", {"rating": "good"}, format="json", HTTP_APIKEY=key)
    assert (again.status_code, again.json()["rc"]) == (400, "NotRateable")


def test_ratings_without_credentials_or_of_aimed_requests_are_kept_but_not_counted(
    api, served, register
):
    anonymous = served()
    assert api.post(f"{V2}/rate/{anonymous}", {"rating": "bad"}, format="json").status_code == 200
    _, key = register("aimer")
    server_id = str(volunteer("rated").server.pk)
    aimed = served(HTTP_APIKEY=key, body={"workers": [server_id]})
    rated = api.post(f"{V2}/rate/{aimed}", {"rating": "bad"}, format="json", HTTP_APIKEY=key)
    assert rated.status_code == 200
    assert list(Job.objects.values_list("rating", flat=True)) == ["bad", "bad"]
    server = Server.objects.get(name="rated")
    assert (server.rec_good, server.rec_bad) == (0, 0)


def test_a_stranger_cannot_rate(api, served, register):
    prompt_id = served()
    _, key = register("stranger")
    as_account = api.post(
        f"{V2}/rate/{prompt_id}", {"rating": "bad"}, format="json", HTTP_APIKEY=key
    )
    assert (as_account.status_code, as_account.json()["rc"]) == (403, "NotYourRequest")
    assert "Only whoever sent request" in as_account.json()["message"]
    # Anonymous too, but from another address.
    elsewhere = api.post(
        f"{V2}/rate/{prompt_id}", {"rating": "bad"}, format="json", REMOTE_ADDR="203.0.113.9"
    )
    assert (elsewhere.status_code, elsewhere.json()["rc"]) == (403, "NotYourRequest")
    assert Job.objects.get().rating == ""
    assert Server.objects.get(name="rated").rec_bad == 0


def test_an_expired_or_unknown_request_cannot_be_rated(api, served):
    prompt_id = served()
    Prompt.objects.update(expires_at=Prompt.objects.get().created - timedelta(seconds=1))
    for target in (prompt_id, "nonsense", "cmpl-" + "0" * 32):
        gone = api.post(f"{V2}/rate/{target}", {"rating": "good"}, format="json")
        assert (gone.status_code, gone.json()["rc"]) == (404, "RequestNotFound")


def test_one_generation_of_several_by_its_index(api, served):
    prompt_id = served(n=3)
    rate = lambda body: api.post(f"{V2}/rate/{prompt_id}", body, format="json")  # noqa: E731
    assert rate({"rating": "good", "generation": 1}).json() == {
        "rating": "good",
        "generations": [1],
    }
    assert rate({"rating": "good", "generation": 3}).json()["rc"] == "NotRateable"
    assert rate({"rating": "bad"}).json() == {"rating": "bad", "generations": [0, 2]}
    assert rate({"rating": "meh"}).status_code == 400


def test_the_openai_id_and_the_original_api_rate_the_same_request(api, served, register):
    prompt_id = served()
    openai_id = "cmpl-" + prompt_id.replace("-", "")
    user_key = register("owner")[1]
    refused = api.post(
        f"{V2}/rate/{openai_id}",
        {"rating": "good"},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {user_key}",
    )
    assert refused.status_code == 403
    ok = api.post(f"/generate/rate/{openai_id}", {"rating": "good"}, format="json")
    assert ok.json() == {"rating": "good", "generations": [0]}


def test_the_kobold_face_rates_by_genkey(api):
    server = volunteer("kobold")
    # As the KoboldAI face queues a generate request with a genkey, from 127.0.0.1 (no
    # server online here to wait for: queued through the service the face calls).
    token = clients.remember(RequestFactory().post("/api/v1/generate"))
    try:
        prompt_create(
            user=anonymous_user(),
            request=GenerationRequest(
                text="Hi", n=1, max_length=8, max_context_length=512, genkey="KCPP1"
            ),
        )
    finally:
        clients.forget(token)
    server.work(" hello there", queue=False)
    missing = api.post("/api/extra/rate", {"genkey": "KCPP2", "rating": "good"}, format="json")
    assert missing.status_code == 404
    stranger = api.post(
        "/api/extra/rate", {"genkey": "KCPP1", "rating": "good"}, format="json",
        REMOTE_ADDR="203.0.113.9",
    )  # fmt: skip
    assert stranger.status_code == 404  # another address's genkeys are not even seen
    rated = api.post("/api/extra/rate", {"genkey": "KCPP1", "rating": "good"}, format="json")
    assert rated.json() == {"rating": "good", "generations": [0]}
    assert Job.objects.get().rating == "good"


def test_bad_ratings_pause_a_server():
    server = volunteer("disliked")
    for i in range(10):
        record_rating(server_id=server.work(f" answer {i}").server_id, good=i % 4 == 0)
    servers_review(server_ids=[server.server.pk])
    assert "ratings of its results were bad" in server.server.paused_reason
    liked = volunteer("liked")
    for i in range(10):
        record_rating(server_id=liked.work(f" answer {i}").server_id, good=i % 2 == 0)
    servers_review(server_ids=[liked.server.pk])
    assert not liked.server.paused
