"""Drive a live cluster with horde-sdk, the AI Horde's own Python client (research §4.1).

Run by koboldcluster/tests/test_horde_sdk.py in a subprocess, with a Python that has
horde-sdk installed (it imports no Django). AI_HORDE_URL must be set before horde_sdk is
imported: the SDK reads it once, at import. Prints one JSON report as its last line.

Environment: AI_HORDE_URL, CLIENT_KEY (a requester's key), WORKER_KEY (a server owner's key),
RECIPIENT (alias#id of a kudos transfer's recipient), MODEL, WORKER_NAME.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Any

if not os.environ.get("AI_HORDE_URL"):
    sys.exit("Set AI_HORDE_URL (e.g. http://127.0.0.1:5001/api/) before running this.")

# ruff: noqa: E402 (horde_sdk reads AI_HORDE_URL when it is imported)
from horde_sdk.ai_horde_api.ai_horde_clients import (
    AIHordeAPIManualClient,
    AIHordeAPISimpleClient,
)
from horde_sdk.ai_horde_api.apimodels import (
    AIHordeHeartbeatRequest,
    AllWorkersDetailsRequest,
    DeleteTextGenerateRequest,
    FindUserRequest,
    HordePerformanceRequest,
    HordeStatusModelsAllRequest,
    KudosTransferRequest,
    ListUsersDetailsRequest,
    ModelGenerationInputKobold,
    SingleUserDetailsRequest,
    SingleWorkerDetailsRequest,
    TextGenerateAsyncRequest,
    TextGenerateJobPopRequest,
    TextGenerateStatusRequest,
    TextGenerationJobSubmitRequest,
)
from horde_sdk.ai_horde_api.consts import GENERATION_STATE, MODEL_TYPE
from horde_sdk.generic_api.apimodels import RequestErrorResponse

CLIENT_KEY = os.environ["CLIENT_KEY"]
WORKER_KEY = os.environ["WORKER_KEY"]
MODEL = os.environ.get("MODEL", "koboldcpp/sdk-test-model")
WORKER_NAME = os.environ.get("WORKER_NAME", "sdk-worker")
GENERATED = " and the kobold went on a long journey."

client = AIHordeAPIManualClient()
report: dict[str, Any] = {"errors": [], "pops": [], "rewards": []}


def call(name: str, request: Any, expected: type | None = None) -> Any:
    """One request through the SDK; a RequestErrorResponse or a wrong type is recorded."""
    expected = expected or request.get_default_success_response_type()
    response = client.submit_request(request, expected)
    if isinstance(response, RequestErrorResponse) or not isinstance(response, expected):
        report["errors"].append({"call": name, "response": repr(response)})
        return None
    return response


def pop() -> Any:
    request = TextGenerateJobPopRequest(
        apikey=WORKER_KEY,
        name=WORKER_NAME,
        models=[MODEL],
        max_length=512,
        max_context_length=4096,
        bridge_agent="horde-sdk test worker:1:local",
        amount=1,
    )
    return call("pop", request)


def work(stop: threading.Event) -> None:
    """A worker the way horde-sdk's own workers are written: pop, then submit every id."""
    while not stop.is_set():
        job = pop()
        if job is None or not job.ids:
            time.sleep(0.3)
            continue
        report["pops"].append(
            {
                "ids": [str(i) for i in job.ids],
                "model": job.model,
                "ttl": job.ttl,
                "prompt": job.payload.prompt,
                "max_length": job.payload.max_length,
                "temperature": job.payload.temperature,
            }
        )
        for job_id in job.ids:
            submit = TextGenerationJobSubmitRequest(
                apikey=WORKER_KEY, id=job_id, generation=GENERATED, state=GENERATION_STATE.ok
            )
            done = call("submit", submit)
            if done is not None:
                report["rewards"].append(done.reward)


def generate() -> None:
    """The SDK's simple client: post the request, poll its status until it is complete."""
    request = TextGenerateAsyncRequest(
        apikey=CLIENT_KEY,
        prompt="Once upon a time",
        models=[MODEL],
        params=ModelGenerationInputKobold(max_length=16, max_context_length=1024, temperature=0.7),
    )
    status, request_id = AIHordeAPISimpleClient().text_generate_request(request, timeout=120)
    report["request_id"] = str(request_id)
    report["status"] = {
        "finished": status.finished,
        "done": status.done,
        "is_possible": status.is_possible,
        "kudos": status.kudos,
        "generations": [
            {
                "text": g.text,
                "model": g.model,
                "state": str(getattr(g.state, "value", g.state)),
                "worker_id": str(g.worker_id),
                "worker_name": g.worker_name,
            }
            for g in status.generations
        ],
    }


def cancel() -> None:
    """A second request, read once and cancelled (the SDK's cleanup path)."""
    accepted = call(
        "async",
        TextGenerateAsyncRequest(apikey=CLIENT_KEY, prompt="never mind", models=["nobody"]),
    )
    if accepted is None:
        return
    read = call("status", TextGenerateStatusRequest(id=accepted.id_))
    cancelled = call("cancel", DeleteTextGenerateRequest(id=accepted.id_))
    if read is not None and cancelled is not None:
        report["cancel"] = {
            "warning": accepted.message,
            "is_possible": read.is_possible,
            "queue_position": read.queue_position,
            "waiting_after": cancelled.waiting,
        }


def read_details() -> None:
    """Users, workers and status as the SDK's models parse them."""
    me = call("find_user", FindUserRequest(apikey=CLIENT_KEY))
    if me is not None:
        report["find_user"] = {"username": me.username, "id": me.id_, "kudos": me.kudos}
        user = call("user", SingleUserDetailsRequest(user_id=str(me.id_)))
        if user is not None:
            report["user"] = {"username": user.username, "records_usage": user.records.usage.tokens}
    users = call("users", ListUsersDetailsRequest(page=1))
    if users is not None:
        report["users"] = sorted(u.username for u in users.root)
    workers = call("workers", AllWorkersDetailsRequest(apikey="0000000000"))
    if workers is not None:
        report["workers"] = [w.name for w in workers.root]
        mine = [w for w in workers.root if w.name == WORKER_NAME]
        if mine:
            one = call(
                "worker", SingleWorkerDetailsRequest(worker_id=mine[0].id_, apikey=WORKER_KEY)
            )
            if one is not None:
                report["worker"] = {
                    "name": one.name,
                    "requests_fulfilled": one.requests_fulfilled,
                    "models": one.models,
                    "owner": one.owner,
                    "maintenance_mode": one.maintenance_mode,
                }
    heartbeat = call("heartbeat", AIHordeHeartbeatRequest())
    if heartbeat is not None:
        report["heartbeat"] = {"message": heartbeat.message, "version": heartbeat.version}
    models = call("models", HordeStatusModelsAllRequest(type=MODEL_TYPE.text))
    if models is not None:
        report["models"] = {m.name: m.count for m in models.root}
    performance = call("performance", HordePerformanceRequest())
    if performance is not None:
        report["performance"] = {"text_worker_count": performance.text_worker_count}
    transfer = call(
        "transfer",
        KudosTransferRequest(apikey=WORKER_KEY, username=os.environ["RECIPIENT"], amount=3),
    )
    if transfer is not None:
        report["transferred"] = transfer.transferred


def main() -> None:
    stop = threading.Event()
    worker = threading.Thread(target=work, args=(stop,), daemon=True)
    worker.start()
    try:
        generate()
    finally:
        stop.set()
        worker.join(timeout=30)
    idle = pop()  # nothing left: the no-job answer must parse too
    report["idle_pop"] = None if idle is None else {"ids": idle.ids, "model": idle.model}
    cancel()
    read_details()
    print(json.dumps(report, default=str))


if __name__ == "__main__":
    main()
