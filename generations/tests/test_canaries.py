"""Consensus canaries: a liar among honest servers of one model is paused within the
configured window, honest servers whose answers agree never are, and canaries are ordinary
paid jobs aimed at one server each.

The servers here are doubles (named so): they answer through the same services a bridge's
pop and submit call, with texts the test chooses, on a clock the test moves.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest

from accounts.models import LedgerEntry
from generations.canaries import (
    CANARY_USERNAME,
    CORPUS,
    canaries_compare,
    canaries_start,
    canary_account,
)
from generations.delivery import job_submit
from generations.models import Job, Prompt
from servers.models import CanaryRound, Server
from servers.services import Credentials
from servers.tests.volunteers import Volunteer, volunteer

pytestmark = pytest.mark.django_db

MODEL = "Llama-3-8B-Instruct"


def honest_answer(prompt: str) -> str:
    """What every honest server of MODEL answers (greedy: the same for all)."""
    return f" the honest continuation of {prompt.split()[1]} and more words after it"


class CanaryDouble:
    """Servers (doubles) answering each canary round; `answer(volunteer, prompt)` decides."""

    def __init__(self, servers: list[Volunteer]) -> None:
        self.servers = servers
        clock = servers[0].clock
        for server in servers:
            server.clock = clock  # one clock for all

    def round(self, answer) -> CanaryRound | None:  # noqa: ANN001 (a function of the test)
        self.servers[0].tick(61 * 60)  # the next round is due
        for server in self.servers:
            server.pop(queue=False)  # checked in: active
        now = self.servers[0].now
        if not canaries_start(now=now, rng=random.Random(now.timestamp())):
            return None
        jobs = [(server, server.pop(queue=False)) for server in self.servers]
        done = now + timedelta(seconds=5)  # a plausible speed
        for server, job in jobs:
            text = None if job is None else answer(server, job.prompt.text)
            if text is not None:
                credentials = Credentials(api_user=server.owner)
                job_submit(job_id=job.id, credentials=credentials, text=text, now=done)
        canaries_compare(now=done)
        return CanaryRound.objects.order_by("-created").first()


def paused() -> set[str]:
    return set(Server.objects.filter(paused=True).values_list("name", flat=True))


def test_a_liar_among_three_honest_servers_is_paused_within_the_window():
    servers = [volunteer(f"honest-{i}", MODEL) for i in range(3)] + [volunteer("liar", MODEL)]
    double = CanaryDouble(servers)
    rng = random.Random(7)
    liar_answer = lambda s, p: (  # noqa: E731
        f" {rng.choice(['banana', 'seven', 'the', 'blue'])} words of another model"
        if s.name == "liar"
        else honest_answer(p)
    )
    caught_after = None
    for round_number in range(1, 11):
        double.round(liar_answer)
        if "liar" in paused():
            caught_after = round_number
            break
    # The first round whose decayed count of canaries reaches SUSPICION_MIN_CANARIES (3):
    # 1 + 0.9 + 0.81 < 3 ≤ 1 + 0.9 + 0.81 + 0.729 with RECORD_WINDOW_CANARIES 10.
    assert caught_after == 4
    assert paused() == {"liar"}
    reason = Server.objects.get(name="liar").paused_reason
    assert reason.startswith("answers unlike its model")
    for i in range(3):
        record = Server.objects.get(name=f"honest-{i}")
        assert (record.rec_canary_disagreed, record.rec_canary_agreed > 2) == (0, True)


def test_honest_servers_whose_answers_agree_are_never_paused_over_many_canaries():
    servers = [volunteer(f"honest-{i}", MODEL) for i in range(4)]
    double = CanaryDouble(servers)
    for _ in range(40):
        decided = double.round(lambda s, p: honest_answer(p))
        assert decided is not None and decided.majority == decided.answered == 4
    assert paused() == set()
    assert CanaryRound.objects.count() == 24  # the last day's (bounded), of 40 rounds
    assert {p for p in Prompt.objects.values_list("text", flat=True)} <= set(CORPUS)


def test_answers_that_differ_only_after_the_first_words_agree():
    # A different quantisation drifts later in the text: only the first words are compared.
    servers = [volunteer(f"q-{i}", MODEL) for i in range(3)]
    double = CanaryDouble(servers)
    for _ in range(5):
        double.round(lambda s, p: honest_answer(p) + f" then drifting {s.name}")
    assert paused() == set()
    assert Server.objects.filter(rec_canary_agreed__gt=0).count() == 3


def test_an_honest_server_that_differs_in_one_canary_of_five_is_never_paused():
    # A different quantisation of the same model may change even the first words now and
    # then: at one canary in five, 200 rounds never take its record over the threshold.
    servers = [volunteer(f"h-{i}", MODEL) for i in range(3)] + [volunteer("q4", MODEL)]
    double = CanaryDouble(servers)
    rng = random.Random(5)
    drifts = 0
    for _ in range(200):
        drift = rng.random() < 0.2
        drifts += drift
        double.round(
            lambda s, p, d=drift: (
                " quantised otherwise" if s.name == "q4" and d else honest_answer(p)
            )
        )
    assert 30 < drifts < 50
    assert paused() == set()
    assert Server.objects.get(name="q4").rec_canary_disagreed > 0


def test_no_majority_or_too_few_answers_count_nothing():
    servers = [volunteer(f"s-{i}", MODEL) for i in range(4)]
    double = CanaryDouble(servers)
    split = double.round(lambda s, p: " one answer here" if s.name < "s-2" else " another answer")
    assert (split.answered, split.majority) == (4, 2)
    silent = double.round(lambda s, p: honest_answer(p) if s.name < "s-2" else None)
    assert silent.compared is None  # waiting for the others
    canaries_compare(now=servers[0].now + timedelta(seconds=301))  # CANARY_WAIT_SECONDS
    silent.refresh_from_db()
    assert (silent.answered, silent.majority) == (2, 2)
    assert set(Server.objects.values_list("rec_canary_agreed", "rec_canary_disagreed")) == {(0, 0)}
    # The unanswered prompts were taken off the queue when the round was compared.
    assert not Prompt.objects.filter(state="live", waiting__gt=0).exists()


def test_canaries_are_aimed_paid_jobs_of_the_cluster_account_and_only_for_three_servers():
    pair = [volunteer(f"pair-{i}", "Mistral-7B") for i in range(2)]
    trio = [volunteer(f"trio-{i}", MODEL) for i in range(3)]
    CanaryDouble([*trio, *pair]).round(lambda s, p: honest_answer(p))
    jobs = Job.objects.select_related("server", "prompt__user")
    # One canary per server of the model three servers serve; none for a model of two.
    assert sorted(j.server.name for j in jobs) == ["trio-0", "trio-1", "trio-2"]
    assert {j.prompt.user.username for j in jobs} == {CANARY_USERNAME}
    assert {j.prompt.workers for j in jobs} == {Prompt.Workers.ONLY}
    params = jobs.first().prompt.params
    assert (params["top_k"], params["temperature"], params["sampler_seed"]) == (1, 0.01, 26)
    usage = LedgerEntry.objects.filter(kind="usage", user__username=CANARY_USERNAME)
    assert usage.count() == 3 and all(e.kudos < 0 for e in usage)


def test_a_model_gets_a_round_once_per_interval(settings):
    servers = [volunteer(f"s-{i}", MODEL) for i in range(3)]
    for server in servers:
        server.pop(queue=False)
    now = servers[0].now
    assert canaries_start(now=now) == 1
    assert canaries_start(now=now + timedelta(minutes=59)) == 0
    settings.KOBOLDCLUSTER = {**settings.KOBOLDCLUSTER, "CANARY_EVERY_MINUTES": 0}
    assert canaries_start(now=now + timedelta(hours=5)) == 0


def test_no_canaries_when_their_accounts_name_was_taken_by_someone():
    from accounts.models import User

    User.objects.create(username=CANARY_USERNAME, kind=User.Kind.UNCLAIMED)
    servers = [volunteer(f"s-{i}", MODEL) for i in range(3)]
    for server in servers:
        server.pop(queue=False)
    assert canaries_start(now=servers[0].now) == 0
    assert not Prompt.objects.exists()


def test_nobody_can_send_prompts_as_the_canary_account(api):
    canary_account()
    answer = api.post(
        "/generate/prompt", {"prompt": "Hi", "username": CANARY_USERNAME}, format="json"
    )
    assert answer.status_code == 401
    body = {"username": CANARY_USERNAME, "password": "guess", "name": "evil", "model": "m"}
    assert api.post("/generate/pop", body, format="json").status_code == 401
