"""Consensus canaries: the cluster asks several servers of one model the same question, with
greedy sampling, and a server whose answers keep disagreeing with the majority is suspected
of serving another model (servers/suspicion.py: "answers unlike its model").

A round (`canaries_start`, from a scheduled task) takes a prompt of a small built-in corpus
and queues it once per server (up to CANARY_MAX_SERVERS) of a model that at least
CANARY_MIN_SERVERS active, unpaused servers advertise: an ordinary prompt of the cluster's
canary account, aimed at that one server (the AI Horde's `workers` list) with that model,
`temperature` 0, `top_k` 1, a fixed seed and CANARY_LENGTH tokens. To a bridge it is a job
like any other, and it is paid like any other (the canary account's usage in the ledger).

`canaries_compare` reads the answers once every server answered, or CANARY_WAIT_SECONDS
after the start: the first CANARY_COMPARE_WORDS words of each (whitespace normalised). With
three or more answers and a strict majority, every answering server's record counts an
agreement or a disagreement (servers/records.py); without a majority nothing is counted. The
texts are never stored: the jobs' answers are purged with their prompts as usual.
"""

from __future__ import annotations

import logging
import random
from collections import Counter, defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.db import transaction
from django.utils import timezone

from accounts.models import User
from generations.intake import GenerationRequest, prompt_create
from generations.models import Job, Prompt
from generations.params import GenerationParamsSerializer, split_params
from koboldcluster.api import validated
from servers.models import CanaryJob, CanaryRound, Server
from servers.records import record_canary
from servers.suspicion import servers_review

logger = logging.getLogger(__name__)

CANARY_USERNAME = "KoboldCluster canaries"
# Short beginnings whose likeliest continuation any model of one name continues alike.
CORPUS = (
    "The capital of France is",
    "1, 2, 3, 4, 5, 6,",
    "Monday, Tuesday, Wednesday,",
    "The quick brown fox jumps over the",
    "Water boils at a temperature of",
    "A, B, C, D, E, F,",
    "The largest planet in our solar system is",
    "Twinkle, twinkle, little star,",
    "In 1492, Columbus sailed",
    "The opposite of hot is",
    "def fibonacci(n):\n    ",
    "January, February, March,",
)
SEED = 26
# Rounds are kept this long after their comparison (the evidence an admin may look at).
KEEP = timedelta(hours=24)


def canary_account() -> User | None:
    """The cluster's own account that asks (and pays for) the canaries; None if its name was
    taken by someone (then no canaries: whoever asks them could rate their answers).

    Nobody can sign in as it: it is registered (so its name cannot be claimed, by a
    registration or a server's first pop) without a usable password and without keys; its
    name has a space, which registration refuses."""
    user, _ = User.objects.get_or_create(
        username=CANARY_USERNAME,
        # Rounds of many models at once stay within its waiting slots.
        defaults={
            "kind": User.Kind.REGISTERED,
            "password": make_password(None),
            "concurrency": 10_000,
        },
    )
    if (
        user.kind != User.Kind.REGISTERED
        or user.has_usable_password()
        or user.api_keys.exists()
        or Server.objects.filter(owner=user).exists()
    ):
        logger.error("no canaries: the account %r is not the cluster's own", CANARY_USERNAME)
        return None
    return user


def canary_params() -> dict:
    """Greedy and seeded: an honest server of a model answers as its peers do. Through the
    request whitelist like any client's (KoboldAI refuses a temperature of 0: 0.01 with
    top_k 1 is as greedy)."""
    raw = {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "rep_pen": 1.0, "sampler_seed": SEED}
    _, samplers = split_params(validated(GenerationParamsSerializer, raw))
    return samplers


def _servers_by_model(now: datetime) -> dict[str, list[Server]]:
    limits = settings.KOBOLDCLUSTER
    by_model: dict[str, list[Server]] = defaultdict(list)
    active = Server.objects.active(now).filter(paused=False, maintenance=False)
    for server in active.order_by("name"):
        if server.models:  # a server's first model is the one it is asked about
            by_model[server.models[0]].append(server)
    return {m: s for m, s in by_model.items() if len(s) >= limits["CANARY_MIN_SERVERS"]}


def canaries_start(*, now: datetime | None = None, rng: random.Random | None = None) -> int:
    """Start a round for each model due one (CANARY_EVERY_MINUTES since its last); how many."""
    now = now or timezone.now()
    limits = settings.KOBOLDCLUSTER
    every = limits["CANARY_EVERY_MINUTES"]
    if every <= 0:
        return 0
    rng = rng or random.Random()
    account = canary_account()
    if account is None:
        return 0
    due_after = now - timedelta(minutes=every)
    started = 0
    for model, servers in _servers_by_model(now).items():
        if CanaryRound.objects.filter(model=model, created__gt=due_after).exists():
            continue
        chosen = rng.sample(servers, min(len(servers), limits["CANARY_MAX_SERVERS"]))
        _start_round(account, model, chosen, rng.randrange(len(CORPUS)), now)
        started += 1
    return started


def _start_round(
    account: User, model: str, servers: list[Server], index: int, now: datetime
) -> CanaryRound:
    length = settings.KOBOLDCLUSTER["CANARY_LENGTH"]
    with transaction.atomic():
        round_ = CanaryRound.objects.create(model=model, prompt_index=index, created=now)
        for server in servers:
            request = GenerationRequest(
                text=CORPUS[index],
                n=1,
                max_length=min(length, server.max_length),
                max_context_length=min(512, server.max_context_length),
                params=canary_params(),
                models=[model],
                server_ids=[server.pk],
                client_agent="KoboldCluster canary",
            )
            prompt = prompt_create(user=account, request=request, now=now)
            CanaryJob.objects.create(round=round_, server=server, prompt_id=prompt.id)
    logger.info("canary round %s: %s servers of %s", round_.pk, len(servers), model)
    return round_


def first_words(text: str) -> str:
    """What answers are compared on: their first CANARY_COMPARE_WORDS words."""
    return " ".join(text.split()[: settings.KOBOLDCLUSTER["CANARY_COMPARE_WORDS"]])


def canaries_compare(*, now: datetime | None = None) -> int:
    """Compare the rounds that are complete or waited long enough; how many were compared."""
    now = now or timezone.now()
    waited = now - timedelta(seconds=settings.KOBOLDCLUSTER["CANARY_WAIT_SECONDS"])
    compared = 0
    for round_ in CanaryRound.objects.filter(compared__isnull=True).order_by("created"):
        jobs = list(round_.jobs.all())
        answers = _answers(jobs)
        if len(answers) < len(jobs) and round_.created > waited:
            continue  # not all in yet
        _judge(round_, jobs, answers, now)
        compared += 1
    CanaryRound.objects.filter(compared__lt=now - KEEP).delete()
    return compared


def _answers(jobs: list[CanaryJob]) -> dict[int, str]:
    """The delivered answers by canary job, from the jobs while their prompts live."""
    by_prompt = {job.prompt_id: job.pk for job in jobs}
    done = Job.objects.filter(prompt_id__in=by_prompt, state=Job.State.DONE).values_list(
        "prompt_id", "text"
    )
    return {by_prompt[prompt_id]: first_words(text) for prompt_id, text in done}


def _judge(
    round_: CanaryRound, jobs: list[CanaryJob], answers: dict[int, str], now: datetime
) -> None:
    counts = Counter(answers.values())
    top, votes = counts.most_common(1)[0] if counts else ("", 0)
    decided = len(answers) >= 3 and votes * 2 > len(answers)
    with transaction.atomic():
        for job in jobs:
            if job.pk not in answers:
                continue
            if decided:
                job.agreed = answers[job.pk] == top
                job.save(update_fields=["agreed"])
                record_canary(server_id=job.server_id, agreed=job.agreed)
        round_.compared, round_.answered, round_.majority = now, len(answers), votes
        round_.save(update_fields=["compared", "answered", "majority"])
        # What was not served by now will not be compared: take it off the queue.
        Prompt.objects.filter(
            id__in=[job.prompt_id for job in jobs], state=Prompt.State.LIVE
        ).update(waiting=0, state=Prompt.State.CANCELLED)
    if decided:
        servers_review(server_ids=[job.server_id for job in jobs], now=now)
    logger.info(
        "canary round %s of %s: %s answers, %s alike%s",
        round_.pk,
        round_.model,
        len(answers),
        votes,
        "" if decided else " (no majority: not counted)",
    )
