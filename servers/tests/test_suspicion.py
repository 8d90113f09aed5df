"""Each suspicion rule pauses a server that trips it and leaves one that does not alone; a
paused server's pops say why; an account paused repeatedly is flagged; an admin clears it."""

from __future__ import annotations

import pytest

from accounts.models import User
from servers.models import Server
from servers.records import model_size, speed_cap
from servers.suspicion import server_unpause, servers_review, suspicion_of
from servers.tests.volunteers import Volunteer, ask, volunteer

pytestmark = pytest.mark.django_db

JOBS = 30  # more than SUSPICION_MIN_JOBS (20)


def sentence(i: int) -> str:
    return f" and then the {i}th traveller walked on through the forest"


def reviewed(*volunteers: Volunteer) -> dict[str, str]:
    """Review the servers; the paused ones' names with their reasons."""
    servers_review(server_ids=[v.server.pk for v in volunteers])
    return {s.name: s.paused_reason for s in Server.objects.filter(paused=True)}


def test_a_server_faster_than_its_model_size_allows_is_paused():
    liar, honest = volunteer("liar", "Llama-3-70B-Instruct"), volunteer("honest", "Llama-3-70B")
    for i in range(JOBS):
        liar.work(sentence(i) * 4, seconds=0.5)  # ~120 tokens in 0.5 s: 240 t/s on a 70B
        honest.work(sentence(i) * 4, seconds=8)  # 15 t/s
    paused = reviewed(liar, honest)
    assert list(paused) == ["liar"]
    assert "faster than 30 tokens/s" in paused["liar"]
    assert "Llama-3-70B-Instruct" in paused["liar"]


def test_a_tiny_or_unnamed_model_has_no_speed_cap():
    fast = volunteer("fast", "SmolLM-135M")
    for i in range(JOBS):
        fast.work(sentence(i) * 4, seconds=0.05)
    assert reviewed(fast) == {}


@pytest.mark.parametrize(
    ("name", "size", "cap"),
    [
        ("koboldcpp/Llama-3-70B-Instruct.Q4_K_M", (70.0, False), 30.0),
        ("Mixtral-8x7B-v0.1", (56.0, True), 180.0),
        ("Qwen2.5-32B", (32.0, False), 100.0),
        ("mistral-7b-instruct", (7.0, False), 150.0),
        ("Phi-3-mini-3.8b", (3.8, False), 400.0),
        ("tiny-llm", None, None),
        ("gpt2-1.5B-draft-13B", (13.0, False), 150.0),
    ],
)
def test_the_size_is_read_from_the_model_name(name, size, cap):
    assert model_size(name) == size
    assert speed_cap(name) == cap


def test_a_server_returning_empty_results_is_paused():
    empty, terse = volunteer("empty"), volunteer("terse")
    for i in range(JOBS):
        empty.work(" " if i % 4 else "ok then")
        terse.work("Yes." if i % 2 else sentence(i))  # short, but not empty
    paused = reviewed(empty, terse)
    assert list(paused) == ["empty"]
    assert "empty or nearly empty" in paused["empty"]


def test_a_server_repeating_one_result_for_different_prompts_is_paused():
    parrot, honest = volunteer("parrot"), volunteer("honest")
    for i in range(JOBS):
        parrot.work("I cannot help with that request today.", prompt=f"prompt {i}")
        honest.work(sentence(i), prompt=f"prompt {i}")
    paused = reviewed(parrot, honest)
    assert list(paused) == ["parrot"]
    assert "repeated a result of another prompt" in paused["parrot"]


def test_the_same_result_for_the_same_prompt_is_no_repeat():
    greedy = volunteer("greedy")
    prompt = ask("What is 2 + 2?", max_length=8)
    from generations.models import Prompt

    for _ in range(JOBS):
        Prompt.objects.filter(pk=prompt.pk).update(waiting=1)
        greedy.work(" 4, of course.", queue=False)
    assert greedy.server.rec_repeated == 0
    assert reviewed(greedy) == {}


def test_a_server_that_gives_jobs_back_or_lets_them_time_out_is_paused():
    flaky, steady = volunteer("flaky"), volunteer("steady")
    for i in range(JOBS):
        if i % 3 == 0:
            flaky.work(sentence(i))
        elif i % 3 == 1:
            flaky.give_back()
        else:
            flaky.let_time_out()
        steady.work(sentence(i)) if i % 5 else steady.give_back()  # 20 % failures
    paused = reviewed(flaky, steady)
    assert list(paused) == ["flaky"]
    assert "given back or timed out" in paused["flaky"]
    record = flaky.server
    assert record.rec_failed > 0 and record.rec_abandoned > 0


def test_no_rule_judges_a_server_before_enough_jobs():
    newcomer = volunteer("newcomer")
    for _ in range(5):
        newcomer.work("")
    assert suspicion_of(newcomer.server) is None


def test_a_paused_server_gets_no_job_and_its_pop_says_why(api):
    owner, key = _registered("paula")
    paula = Volunteer(owner=owner, name="paula-1")
    for _ in range(JOBS):
        paula.work("")
    assert list(reviewed(paula)) == ["paula-1"]
    ask("For anyone")

    body = {"name": "paula-1", "models": ["tiny-llm"]}
    answer = api.post("/api/v2/generate/text/pop", body, format="json", HTTP_APIKEY=key).json()

    assert answer["id"] is None
    assert "paused (" in answer["paused_reason"] and "empty" in answer["paused_reason"]
    assert "administrator to clear the pause" in answer["paused_reason"]
    worker = api.get(f"/api/v2/workers/{paula.server.pk}").json()
    assert worker["paused"] is True and "empty" in worker["paused_reason"]
    listed = api.get("/api/v2/workers").json()
    assert [(w["name"], w["paused"]) for w in listed] == [("paula-1", True)]
    # Its owner's own requests it still serves (to check a fix).
    ask("Mine", user=owner)
    own = api.post("/api/v2/generate/text/pop", body, format="json", HTTP_APIKEY=key).json()
    assert own["id"] is not None and "paused_reason" not in own

    assert server_unpause(server_id=paula.server.pk)
    cleared = paula.server
    assert (cleared.paused, cleared.paused_reason, cleared.rec_jobs) == (False, "", 0)
    assert reviewed(paula) == {}


def test_an_account_paused_repeatedly_is_flagged_and_loses_its_trust():
    owner = volunteer("a-1", trusted=True).owner
    for round_ in range(3):
        server = Volunteer(owner=owner, name=f"a-{round_}")
        for _ in range(JOBS):
            server.work("")
        assert f"a-{round_}" in reviewed(server)
        owner.refresh_from_db()
        assert (owner.pauses, owner.flagged) == (round_ + 1, round_ == 2)
    assert owner.trusted is False


def _registered(name: str) -> tuple[User, str]:
    from accounts.keys import account_register

    return account_register(username=name)
