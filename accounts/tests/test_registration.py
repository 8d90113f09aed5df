"""Registration (API, page, command): one account per name, a key shown once, never stored."""

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from accounts.models import ApiKey, User
from generations.models import Prompt

pytestmark = pytest.mark.django_db

KEY_FORMAT = re.compile(r"[A-Za-z0-9_-]{22}\Z")


def everything_in_the_database() -> str:
    dump = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            dump.append(repr(cursor.fetchall()))
    return "\n".join(dump)


def test_register_returns_the_account_and_a_22_character_key(api):
    response = api.post("/api/v2/register", {"username": "carol"}, format="json")

    assert response.status_code == 201
    body = response.json()
    carol = User.objects.get(username="carol")
    assert body == {"id": carol.pk, "username": f"carol#{carol.pk}", "apikey": body["apikey"]}
    assert KEY_FORMAT.match(body["apikey"])
    assert carol.kind == User.Kind.REGISTERED
    assert not carol.has_usable_password()
    assert ApiKey.objects.get(user=carol).digest == ApiKey.digest_of(body["apikey"])


def test_the_key_works_and_never_appears_in_the_database(api):
    key = api.post("/api/v2/register", {"username": "carol"}, format="json").json()["apikey"]

    found = api.get("/api/v2/find_user", HTTP_APIKEY=key)
    submitted = api.post("/generate/prompt", {"prompt": "hi"}, format="json", HTTP_APIKEY=key)

    assert found.json()["username"].startswith("carol#")
    assert submitted.status_code == 200
    assert key not in everything_in_the_database()


def test_two_registrations_of_one_name_are_refused(api):
    api.post("/api/v2/register", {"username": "carol"}, format="json")

    response = api.post("/api/v2/register", {"username": "carol"}, format="json")

    assert response.status_code == 400
    assert response.json()["rc"] == "UsernameTaken"
    assert User.objects.filter(username="carol").count() == 1
    assert ApiKey.objects.count() == 1


@pytest.mark.parametrize("name", ["Anonymous", "bob"])
def test_names_with_credentials_cannot_be_registered(api, bob, name):
    response = api.post("/api/v2/register", {"username": name}, format="json")

    assert response.status_code == 400
    assert response.json()["rc"] == "UsernameTaken"
    assert not ApiKey.objects.exists()


def test_an_unclaimed_name_is_claimed_by_registering_it(api, alice, submit_prompt):
    submit_prompt(username="alice")
    Prompt.objects.update(expires_at=timezone.now())  # a claim waits for its prompts to end

    response = api.post("/api/v2/register", {"username": "alice"}, format="json")

    assert response.status_code == 201
    assert response.json()["id"] == alice.pk
    alice.refresh_from_db()
    assert alice.kind == User.Kind.REGISTERED
    refused = api.post("/generate/prompt", {"prompt": "x", "username": "alice"}, format="json")
    assert refused.status_code == 401


@pytest.mark.parametrize(
    "body",
    [{}, {"username": ""}, {"username": "a#1"}, {"username": "two words"}, {"username": 7}],
)
def test_register_refuses_bad_names(api, body):
    response = api.post("/api/v2/register", body, format="json")

    assert response.status_code == 400
    assert "username" in response.json()["errors"]
    assert not ApiKey.objects.exists()


def test_the_register_page_works_without_javascript(client):
    form = client.get("/register")
    assert form.status_code == 200
    assert b'<form method="post"' in form.content
    assert b"csrfmiddlewaretoken" in form.content

    page = client.post("/register", {"username": "dora"})

    assert page.status_code == 201
    assert page["Cache-Control"] == "no-store"
    dora = User.objects.get(username="dora")
    (key,) = re.findall(rb'class="key"><code>([A-Za-z0-9_-]{22})</code>', page.content)
    assert ApiKey.objects.get(user=dora).digest == ApiKey.digest_of(key.decode())
    assert f"dora#{dora.pk}".encode() in page.content


def test_the_register_page_explains_a_taken_name(client, bob):
    page = client.post("/register", {"username": "bob"})

    assert page.status_code == 400
    assert b"is taken" in page.content
    assert not ApiKey.objects.exists()


def test_the_register_page_checks_csrf(db):
    from koboldcluster.asgi_client import Client

    response = Client(enforce_csrf_checks=True).post("/register", {"username": "dora"})

    assert response.status_code == 403
    assert not User.objects.filter(username="dora").exists()


def test_createapikey_registers_and_prints_only_the_key():
    out, err = StringIO(), StringIO()

    call_command("createapikey", "erin", "--name", "laptop", stdout=out, stderr=err)

    key = out.getvalue().strip()
    assert KEY_FORMAT.match(key)
    erin = User.objects.get(username="erin")
    assert erin.kind == User.Kind.REGISTERED
    api_key = ApiKey.objects.get(user=erin)
    assert (api_key.digest, api_key.name) == (ApiKey.digest_of(key), "laptop")
    assert "Registered" in err.getvalue()


def test_createapikey_adds_a_key_to_an_existing_account(bob):
    out = StringIO()

    call_command("createapikey", "bob", stdout=out, stderr=StringIO())

    assert ApiKey.objects.get(user=bob).digest == ApiKey.digest_of(out.getvalue().strip())
    assert bob.check_password("s3rver-pass")  # the password still works too


@pytest.mark.parametrize("name", ["Anonymous", "no spaces"])
def test_createapikey_refuses_bad_names(name):
    with pytest.raises(CommandError):
        call_command("createapikey", name, stdout=StringIO(), stderr=StringIO())
    assert not ApiKey.objects.exists()


def test_the_key_page_says_only_what_is_true_of_each_client(client):
    """Lite and SillyTavern have no setting for the Horde's address: the page must not say so."""
    page = client.post("/register", {"username": "dora"}).content.decode()

    assert "set the Horde URL" not in page
    assert "AI_HORDE_URL=http://testserver/api/" in page
    assert 'new AIHorde({api_route: "http://testserver/api/v2"})' in page
    assert "KoboldAI Lite and SillyTavern have the AI Horde's address written into" in page
