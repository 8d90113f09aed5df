"""Servers in maintenance or paused get only their owner's prompts."""

import pytest

from generations.models import Job
from generations.queue import paused_notice
from servers.models import Server

pytestmark = pytest.mark.django_db


@pytest.fixture
def bobs_server(pop, bob):
    pop()
    return Server.objects.get(name="bob-1")


def test_a_server_in_maintenance_gets_its_owners_prompts(bobs_server, submit_prompt, pop):
    Server.objects.filter(pk=bobs_server.pk).update(maintenance=True)
    submit_prompt("someone else's")
    own = submit_prompt("bob's", username="bob", password="s3rver-pass")

    response = pop()

    assert response.status_code == 200
    assert str(Job.objects.get(id=response.json()["id"]).prompt_id) == own


def test_a_server_in_maintenance_without_its_owners_prompts_is_told_why(
    bobs_server, submit_prompt, pop
):
    Server.objects.filter(pk=bobs_server.pk).update(
        maintenance=True, maintenance_msg="Back after the driver update."
    )
    submit_prompt("someone else's")

    response = pop()

    assert response.status_code == 403
    assert response.json() == {
        "message": "Back after the driver update.",
        "rc": "WorkerMaintenance",
    }
    assert not Job.objects.exists()


def test_maintenance_has_a_default_message(bobs_server, pop):
    Server.objects.filter(pk=bobs_server.pk).update(maintenance=True)

    response = pop()

    assert response.status_code == 403
    assert "maintenance" in response.json()["message"]


def test_a_paused_server_gets_nothing_but_its_owners_prompts_and_is_told_why(
    bobs_server, submit_prompt, pop
):
    Server.objects.filter(pk=bobs_server.pk).update(paused=True, paused_reason="a test")
    submit_prompt("someone else's")

    nothing = pop()
    own = submit_prompt("bob's", username="bob", password="s3rver-pass")
    owners = pop()

    assert nothing.status_code == 200
    assert nothing.json() == {
        "id": None,
        "skipped": {},
        "paused_reason": paused_notice(Server.objects.get(pk=bobs_server.pk)),
    }
    assert "is paused (a test)" in nothing.json()["paused_reason"]
    assert str(Job.objects.get(id=owners.json()["id"]).prompt_id) == own
    assert Job.objects.count() == 1


def test_after_maintenance_the_server_is_served_again(bobs_server, submit_prompt, pop):
    Server.objects.filter(pk=bobs_server.pk).update(maintenance=True)
    submit_prompt()
    assert pop().status_code == 403

    Server.objects.filter(pk=bobs_server.pk).update(maintenance=False)

    assert pop().json()["id"]
