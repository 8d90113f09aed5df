"""Trust: new accounts are untrusted and run fewer servers; trust is earned or given; requests
for trusted servers only never reach an untrusted or a paused server, through every face."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from accounts.ledger import ledger_fold
from accounts.models import User
from generations.models import Job, Prompt
from generations.tests.test_frontend_api import serve_one
from servers.suspicion import server_pause
from servers.tests.volunteers import Volunteer, ask, volunteer
from servers.trust import accounts_promote

pytestmark = pytest.mark.django_db

V2_ASYNC = "/api/v2/generate/text/async"


def test_a_new_account_is_untrusted_and_runs_at_most_the_untrusted_bound(api, register, settings):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "UNTRUSTED_SERVERS_PER_ACCOUNT": 2}
    user, key = register("newbie")
    assert user.trusted is False
    pop = lambda name: api.post(  # noqa: E731
        "/api/v2/generate/text/pop", {"name": name, "models": ["m"]}, format="json", HTTP_APIKEY=key
    )
    assert [pop(f"n-{i}").status_code for i in range(2)] == [200, 200]
    refused = pop("n-2")
    assert (refused.status_code, refused.json()["rc"]) == (403, "TooManyWorkers")
    assert "untrusted account" in refused.json()["message"]
    assert pop("n-0").status_code == 200  # a server it has keeps working
    User.objects.filter(pk=user.pk).update(trusted=True)  # an administrator's trust
    assert pop("n-2").status_code == 200


def _earn(owner: User, jobs: int, *, joined_days_ago: float) -> None:
    User.objects.filter(pk=owner.pk).update(
        date_joined=timezone.now() - timedelta(days=joined_days_ago)
    )
    server = Volunteer(owner=owner, name=f"{owner.username}-gpu")
    for i in range(jobs):
        server.work(f" the {i}th good answer of many")
    ledger_fold(now=timezone.now() + timedelta(hours=1))


def test_trust_is_earned_with_enough_jobs_over_enough_days_without_a_pause(settings):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "TRUST_MIN_JOBS": 10, "TRUST_MIN_DAYS": 7}
    owner = User.objects.create_user("earnest", password="x")
    _earn(owner, 9, joined_days_ago=8)
    assert accounts_promote() == []  # 9 jobs: not yet
    _earn(owner, 1, joined_days_ago=8)
    assert accounts_promote() == [owner.pk]
    owner.refresh_from_db()
    assert owner.trusted is True


def test_no_trust_for_a_young_account_or_one_paused_lately(settings):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "TRUST_MIN_JOBS": 5, "TRUST_MIN_DAYS": 7}
    young = User.objects.create_user("young", password="x")
    _earn(young, 5, joined_days_ago=3)
    assert accounts_promote() == []
    paused = User.objects.create_user("paused", password="x")
    server = Volunteer(owner=paused, name="p-1")
    server.work(" an answer long enough to count as one")
    _earn(paused, 5, joined_days_ago=30)
    server_pause(server=server.server, reason="test")
    from servers.suspicion import server_unpause

    server_unpause(server_id=server.server.pk)
    assert accounts_promote() == []  # paused within TRUST_MIN_DAYS


def _pops(*servers: Any) -> dict[str, Job | None]:
    return {s.name: s.pop(queue=False) for s in servers}


def test_trusted_only_prompts_never_reach_an_untrusted_or_a_paused_server():
    untrusted = volunteer("untrusted")
    paused = volunteer("paused", trusted=True)
    trusted = volunteer("trusted", trusted=True)
    for s in (untrusted, paused, trusted):
        s.pop(queue=False)  # checked in
    server_pause(server=paused.server, reason="test")
    for i in range(5):
        ask(f"only for the trusted {i}", trusted_workers=True)
    # The untrusted and the paused server get nothing, and the untrusted one is told why.
    assert _pops(untrusted, paused) == {"untrusted": None, "paused": None}
    got = [trusted.pop(queue=False) for _ in range(5)]
    assert all(job is not None for job in got)
    assert set(Job.objects.values_list("server__name", flat=True)) == {"trusted"}
    # A prompt for anyone still reaches the untrusted server.
    ask("for anyone")
    assert untrusted.pop(queue=False) is not None


def test_a_paused_server_of_the_requester_serves_its_own_prompts_but_not_trusted_only_ones():
    paused = volunteer("mine", trusted=True)
    paused.pop(queue=False)
    server_pause(server=paused.server, reason="test")
    ask("my own, trusted only", user=paused.owner, trusted_workers=True)
    assert paused.pop(queue=False) is None
    ask("my own", user=paused.owner)
    assert paused.pop(queue=False) is not None


def test_the_original_and_v2_apis_store_the_ask(api):
    created = api.post(
        "/generate/prompt", {"prompt": "Hi", "trusted_workers": True}, format="json"
    ).json()
    v2 = api.post(
        V2_ASYNC, {"prompt": "Hi", "trusted_workers": True}, format="json", HTTP_APIKEY="0000000000"
    ).json()
    assert set(
        Prompt.objects.filter(pk__in=[created["id"], v2["id"]]).values_list(
            "trusted_workers", flat=True
        )
    ) == {True}
    refused = api.post(
        "/generate/prompt", {"prompt": "Hi", "trusted_workers": "yes"}, format="json"
    )
    assert refused.status_code == 400


@pytest.mark.parametrize("path", ["/api/v1/generate", "/v1/completions"])
def test_the_front_end_faces_refuse_a_trusted_only_request_when_no_trusted_server_is_on(
    api, pop, path, settings
):
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "FRONTEND_GRACE_SECONDS": 0}
    pop()  # bob's server: bob is not trusted
    response = api.post(
        path,
        {"prompt": "Hi", "max_length": 8},
        format="json",
        HTTP_X_KOBOLDCLUSTER_TRUSTED_ONLY="1",
    )
    assert response.status_code == 503
    assert "trusted server" in response.content.decode()
    assert not Prompt.objects.exists()
    bad = api.post(path, {"prompt": "Hi"}, format="json", HTTP_X_KOBOLDCLUSTER_TRUSTED_ONLY="maybe")
    assert bad.status_code == 400


@pytest.mark.django_db(transaction=True)
def test_a_trusted_server_serves_a_trusted_only_request_of_the_kobold_face(api, bob):
    User.objects.filter(pk=bob.pk).update(trusted=True)
    seen: list[dict[str, Any]] = []
    server = serve_one(" the trusted end", seen)
    body = {"prompt": "Once upon a time", "max_length": 16}
    response = api.post(
        "/api/v1/generate", body, format="json", HTTP_X_KOBOLDCLUSTER_TRUSTED_ONLY="1"
    )
    server.join(30)
    assert response.json() == {"results": [{"text": " the trusted end"}]}
    assert Prompt.objects.get().trusted_workers is True
