"""Canaries measured with real servers: the cluster (a real process), the project's bridges
(processes) and llama.cpp's llama-server serving the tiny random LLaMA
(bridge/tests/real_backends.py). Honest servers run the same model on llama-servers started
with different thread and batch settings (their arithmetic may differ in the last bits); the
liar advertises the same model name but serves another one (the same shape, other weights).

Rounds are started and compared by the test process (the services the scheduled task
calls), on a clock that moves a round's interval each time; the bridges serve the canary jobs
as any jobs. The measurements are printed (`-s`) and written in README "Trust and quality".
"""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db.models import F
from django.utils import timezone

from bridge.tests.processes import Process, wait_until
from bridge.tests.real_backends import (
    CONTEXT,
    MODEL_FILE,
    MODEL_NAME,
    REPO,
    RealBackend,
    llama_cpp_dir,
    tiny_model,
)
from bridge.tests.test_e2e import PASSWORD, get
from generations.canaries import canaries_compare, canaries_start
from generations.models import Job
from servers.models import CanaryJob, CanaryRound, Server

pytestmark = [pytest.mark.e2e]

HONEST_ROUNDS = 150
LIAR_ROUNDS = 12


@pytest.fixture
def cluster_env() -> dict[str, str]:
    # The test process queues the canaries: the bridges' held pops find them by re-checking.
    return {
        "KOBOLDCLUSTER_WAKEUP_RECHECK_SECONDS": "0.3",
        "KOBOLDCLUSTER_IDLE_POP_CACHE_SECONDS": "0",
    }


class TunedLlamaServer(RealBackend):
    """llama-server on `model` with its own thread and batch settings."""

    kind = "llamacpp"
    label = "llama.cpp server"

    def __init__(self, tmp: Path, model: Path, threads: int, batch: int) -> None:
        args = [str(llama_cpp_dir() / "bin" / "llama-server"), "-m", str(model)]
        args += ["--host", "127.0.0.1", "-c", str(CONTEXT), "-np", "1"]
        args += ["-t", str(threads), "-b", str(batch), "-ub", str(batch)]
        super().__init__(args, tmp)
        self.wait_ready("/health")


def other_model(tmp: Path) -> Path:
    """A model of the same shape and name with other weights (another seed): the liar's."""
    spec = importlib.util.spec_from_file_location(
        "tiny_model_script", REPO / "scripts" / "tiny_model.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.SEED = 23
    vocab = llama_cpp_dir() / "vocab" / "ggml-vocab-llama-spm.gguf"
    path = tmp / "other" / MODEL_FILE
    path.parent.mkdir()
    script.write(vocab, path)
    return path


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[dict[str, RealBackend]]:
    started: dict[str, RealBackend] = {}
    try:
        started["one-thread"] = TunedLlamaServer(tmp_path, tiny_model(), threads=1, batch=512)
        started["two-threads"] = TunedLlamaServer(tmp_path, tiny_model(), threads=2, batch=32)
        started["liar"] = TunedLlamaServer(tmp_path, other_model(tmp_path), threads=1, batch=512)
        yield started
    finally:
        for backend in started.values():
            backend.stop()


def bridge(cluster: Any, bridge_process: Any, backend: RealBackend, name: str) -> Process:
    args = ("--cluster-url", cluster.url, "--backend-url", backend.url, "--name", name)
    args += ("--username", "bob", "--password", PASSWORD, "--model-name", MODEL_NAME)
    process = bridge_process(*args)
    wait_until(
        lambda: name in {s["name"] for s in get(cluster, "/servers")},
        f"{name} to check in",
        watch=[process],
    )
    return process


def one_round(watch: list[Process]) -> CanaryRound:
    """A round now: the earlier ones are moved a round's interval back (CANARY_EVERY_MINUTES),
    as if that much time had passed."""
    CanaryRound.objects.update(created=F("created") - timedelta(minutes=61))
    now = timezone.now()
    assert canaries_start(now=now, rng=random.Random(now.timestamp())) == 1
    round_ = CanaryRound.objects.latest("created")
    prompts = list(round_.jobs.values_list("prompt_id", flat=True))
    wait_until(
        lambda: Job.objects.filter(prompt_id__in=prompts, state="done").count() == len(prompts),
        "every canary answered",
        timeout=60,
        watch=watch,
    )
    canaries_compare(now=timezone.now())
    round_.refresh_from_db()
    return round_


def test_canaries_with_real_llama_cpp_servers(cluster, bridge_process, backends, capsys):
    honest = {
        "honest-1": backends["one-thread"],
        "honest-2": backends["one-thread"],
        "honest-3": backends["two-threads"],
        "honest-4": backends["two-threads"],
    }
    bridges = [bridge(cluster, bridge_process, b, name) for name, b in honest.items()]

    # Honest servers only: how often does an honest answer disagree with the majority?
    for _ in range(HONEST_ROUNDS):
        one_round(bridges)
    counted = CanaryJob.objects.exclude(agreed=None).count()
    disagreed = CanaryJob.objects.filter(agreed=False).count()
    undecided = CanaryRound.objects.filter(majority__lte=2).count()
    assert set(Server.objects.filter(paused=True).values_list("name", flat=True)) == set()

    # The liar joins.
    bridges.append(bridge(cluster, bridge_process, backends["liar"], "liar"))
    caught = None
    for number in range(1, LIAR_ROUNDS + 1):
        one_round(bridges)
        if Server.objects.get(name="liar").paused:
            caught = number
            break
    honest_paused = Server.objects.filter(paused=True).exclude(name="liar").count()
    with capsys.disabled():
        sys.stdout.write(
            f"\ncanaries, real llama.cpp: {HONEST_ROUNDS} rounds of 4 honest servers, "
            f"{counted} answers compared: {disagreed} disagreed with the majority "
            f"(false-positive rate {disagreed / max(counted, 1):.1%}), "
            f"{undecided} rounds without a majority; liar paused after {caught} rounds; "
            f"honest servers paused: {honest_paused}\n"
        )
    assert caught is not None
    assert honest_paused == 0
