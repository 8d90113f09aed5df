"""A server's record: what its recent jobs, ratings and canaries say about it, never any text.

The record is a handful of counters on the server's own row that decay: at each event of a
kind, every counter of that kind is multiplied by 1 − 1/window and the ones that apply get 1
more. A counter is so about the count over the last `window` events (a sliding window whose
size never grows), and a share (empty results ÷ jobs) reads the same way. Being columns of
the server row, the record is written by the statement that already credits the server for a
job (`generations/delivery.py`) or counts its failure (`generations/lifecycle.py`): no statement
more on the hot path, and in the transaction of the job's state change.

Repeated results are seen through `recent_results`: the digests of the server's last
RECENT_RESULTS results, each with a digest of its prompt's end ("rrrrrrrr.pppp,"), newest
first, cut to a fixed length. A result is counted as repeated when an earlier one had the same
digest for another prompt (the same prompt asked again, a canary say, may get the same greedy
answer). Digests of 32 and 16 bits cannot give back any text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache

from django.conf import settings
from django.db import connection

from servers.models import Server

# How many result digests a server's record keeps (each 14 characters).
RECENT_RESULTS = 32
_ENTRY = 14
# Prompts are told apart by their last this many characters (what differs between turns of
# a chat); the same prompt sent again may well get the same greedy answer.
PROMPT_TAIL = 200
# Shorter results are not compared: "Yes." is a fine answer to many prompts.
REPEAT_MIN_CHARS = 24

JOB_COUNTERS = (
    "rec_jobs",
    "rec_empty",
    "rec_repeated",
    "rec_too_fast",
    "rec_failed",
    "rec_abandoned",
)
RATING_COUNTERS = ("rec_good", "rec_bad")
CANARY_COUNTERS = ("rec_canary_agreed", "rec_canary_disagreed")


def _decay(window_setting: str) -> float:
    return 1.0 - 1.0 / settings.KOBOLDCLUSTER[window_setting]


def _decayed_sets(
    counters: tuple[str, ...], added: dict[str, object], window: str
) -> tuple[str, list]:
    """`c = c * decay + added` for each counter (added: a number, or an SQL fragment with
    its parameters as a tuple)."""
    decay = _decay(window)
    terms, params = [], []
    for counter in counters:
        value = added.get(counter, 0)
        if isinstance(value, tuple):
            sql, *value_params = value
            terms.append(f"{counter} = {counter} * %s + {sql}")
            params += [decay, *value_params]
        else:
            terms.append(f"{counter} = {counter} * %s + %s")
            params += [decay, value]
    return ", ".join(terms), params


# --- What one delivered result adds to the record -----------------------------------------


@dataclass(frozen=True)
class ResultFacts:
    """What the record learns from one delivered result (its text is not kept)."""

    empty: bool
    too_fast: bool
    digest: str  # "" for a result shorter than REPEAT_MIN_CHARS: not compared
    prompt_mark: str


def result_facts(*, text: str, tokens: int, seconds: float, model: str, prompt: str) -> ResultFacts:
    """What the record counts of a result; `prompt` is (the end of) its prompt's text."""
    limits = settings.KOBOLDCLUSTER
    empty = len("".join(text.split())) < limits["NEAR_EMPTY_CHARS"]
    cap = speed_cap(model)
    too_fast = (
        cap is not None
        and tokens >= limits["SPEED_MIN_TOKENS"]
        and (seconds <= 0 or tokens / seconds > cap)
    )
    digest = "" if len(text.strip()) < REPEAT_MIN_CHARS else _digest(text, 4)
    return ResultFacts(
        empty=empty, too_fast=too_fast, digest=digest, prompt_mark=_digest(prompt, 2)
    )


def _digest(text: str, size: int) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).hexdigest()


def delivered_sql(facts: ResultFacts) -> tuple[str, list]:
    """The SET terms (for an UPDATE of servers_server) recording one delivered result."""
    added: dict[str, object] = {
        "rec_jobs": 1,
        "rec_empty": int(facts.empty),
        "rec_too_fast": int(facts.too_fast),
    }
    if facts.digest:
        added["rec_repeated"] = (
            "CASE WHEN recent_results LIKE %s AND recent_results NOT LIKE %s THEN 1 ELSE 0 END",
            f"%{facts.digest}.%",
            f"%{facts.digest}.{facts.prompt_mark},%",
        )
    sets, params = _decayed_sets(JOB_COUNTERS, added, "RECORD_WINDOW_JOBS")
    if facts.digest:
        entry = f"{facts.digest}.{facts.prompt_mark},"
        sets += f", recent_results = substr(%s || recent_results, 1, {RECENT_RESULTS * _ENTRY})"
        params.append(entry)
    return sets, params


def failed_sql(*, abandoned: bool) -> tuple[str, list]:
    """The SET terms recording a job the server gave back (or, `abandoned`, let time out)."""
    added = {"rec_jobs": 1, "rec_abandoned" if abandoned else "rec_failed": 1}
    return _decayed_sets(JOB_COUNTERS, added, "RECORD_WINDOW_JOBS")


def rating_sql(*, good: bool) -> tuple[str, list]:
    return _decayed_sets(
        RATING_COUNTERS, {"rec_good" if good else "rec_bad": 1}, "RECORD_WINDOW_RATINGS"
    )


def canary_sql(*, agreed: bool) -> tuple[str, list]:
    added = {"rec_canary_agreed" if agreed else "rec_canary_disagreed": 1}
    return _decayed_sets(CANARY_COUNTERS, added, "RECORD_WINDOW_CANARIES")


def _record(server_id: object, sets: str, params: list) -> int:
    pk = Server._meta.pk.get_db_prep_value(server_id, connection)
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE servers_server SET {sets} WHERE id = %s", [*params, pk])
        return cursor.rowcount


def record_failure(*, server_id: object, abandoned: bool) -> None:
    """A job its server gave back, or (`abandoned`) let time out: counted in its lifetime
    faults and its record, in the caller's transaction."""
    sets, params = failed_sql(abandoned=abandoned)
    _record(server_id, f"uncompleted_jobs = uncompleted_jobs + 1, {sets}", params)


def record_rating(*, server_id: object, good: bool) -> None:
    _record(server_id, *rating_sql(good=good))


def record_canary(*, server_id: object, agreed: bool) -> None:
    _record(server_id, *canary_sql(agreed=agreed))


def cleared() -> dict[str, object]:
    """The fields of a fresh record (an administrator cleared the server's pause)."""
    fields: dict[str, object] = {
        c: 0.0 for c in (*JOB_COUNTERS, *RATING_COUNTERS, *CANARY_COUNTERS)
    }
    fields["recent_results"] = ""
    return fields


# --- How fast a model of a given size can be ------------------------------------------------

# Tokens per second no single generation of a dense model of at least this many billion
# parameters reaches (README "Trust and quality"); below the smallest size: no cap.
SPEED_CLASSES: tuple[tuple[float, float], ...] = (
    (70.0, 30.0),
    (35.0, 60.0),
    (14.0, 100.0),
    (4.0, 150.0),
    (1.0, 400.0),
)
# A mixture of experts ("8x7B") runs only some experts per token: its cap is this many times
# its class's.
MIXTURE_FACTOR = 3.0

_SIZE = re.compile(r"(?<![a-z0-9.])(?:(\d+)x)?(\d+(?:\.\d+)?)b(?![a-z0-9])", re.IGNORECASE)


@lru_cache(maxsize=4096)
def model_size(model: str) -> tuple[float, bool] | None:
    """(billions of parameters, is a mixture) read from a model name, or None.

    "koboldcpp/Llama-3-70B-Instruct" → (70, False); "Mixtral-8x7B" → (56, True); the largest
    size in the name counts (a "1.5B draft" tag next to "32B" does not make a 32B model fast).
    """
    best: tuple[float, bool] | None = None
    for experts, size in _SIZE.findall(model.replace("_", "-")):
        billions = float(size) * (int(experts) if experts else 1)
        if best is None or billions > best[0]:
            best = (billions, bool(experts))
    return best


def speed_cap(model: str) -> float | None:
    """The most tokens per second a server advertising `model` can plausibly measure, or
    None when its size is unknown or below every class (tiny models are very fast)."""
    size = model_size(model)
    factor = settings.KOBOLDCLUSTER["SPEED_CAP_FACTOR"]
    if size is None or factor <= 0:
        return None
    billions, mixture = size
    for least, cap in SPEED_CLASSES:
        if billions >= least:
            return cap * factor * (MIXTURE_FACTOR if mixture else 1.0)
    return None
