"""Fuzzing the KoboldAI and OpenAI faces and the direct lane's endpoints on a real server.

schemathesis draws requests from the live OpenAPI schema (valid and invalid ones) for every
operation of the faces (/api/v1, /api/latest, /api/extra, /v1) and of the lane (the original
API's /generate/*, the AI Horde's /api/v2/generate/text/*), sends them to the cluster as
./run.sh serves it (uvicorn), and checks each answer: no 5xx (but the designed 503 or 504 of a
front-end request that no server came for: there is none here), a documented status, content
type and body. Bounded for CI: a fixed seed, EXAMPLES per operation (about 300 requests).
koboldcluster/tests/test_schemathesis.py runs the whole schema the same way with the CLI.
"""

from __future__ import annotations

import re

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from koboldcluster.tests.hostile import server_cpu_seconds

pytestmark = pytest.mark.e2e

EXAMPLES = 15
FUZZED = re.compile(r"^/(v1/|api/v1/|api/latest/|api/extra/|generate/|api/v2/generate/text/)")
WAITING = re.compile(r"^/(v1/(chat/)?completions|api/(v1|latest)/generate|api/extra/generate/)")
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
# A stream's body is documented as `type: string` (text/event-stream); schemathesis 4 checks
# each SSE event against that schema and finds an object: the schema of the streams needs
# an event schema (generations/api/sse.py, the lead's rework). Until then their status and
# content type are checked, not their events (schemathesis checks those with every check).


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return {
        "KOBOLDCLUSTER_FRONTEND_WAIT_SECONDS": "0.3",
        "KOBOLDCLUSTER_FRONTEND_GRACE_SECONDS": "0.2",
        "KOBOLDCLUSTER_POP_WAIT_MAX_SECONDS": "1",
    }


def test_the_faces_and_the_lane_answer_within_their_schema(cluster):
    session = requests.Session()
    key = session.post(f"{cluster.url}/api/v2/register", json={"username": "fuzz"}, timeout=10)
    headers = {"apikey": key.json()["apikey"]}
    schema = schemathesis.openapi.from_url(f"{cluster.url}/api/schema?format=json")
    operations = [r.ok() for r in schema.get_all_operations()]
    operations = [op for op in operations if FUZZED.match(op.path)]
    sent, errors, mismatches, costs = 0, [], [], []

    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def fuzz(case) -> None:
            nonlocal sent
            before = server_cpu_seconds(cluster.pgid)
            response = case.call(base_url=cluster.url, session=session, headers=headers)
            costs.append((server_cpu_seconds(cluster.pgid) - before, case.path))
            sent += 1
            designed = response.status_code in (503, 504) and WAITING.match(case.operation.path)
            if response.status_code >= 500 and not designed:
                errors.append(f"{response.status_code} {case.as_curl_command()[:300]}")
            content_type = response.headers.get("content-type", [""])  # lower case, lists
            if "".join(content_type).startswith("text/event-stream"):
                documented = case.operation.definition.raw["responses"]  # see the note on CHECKS
                if str(response.status_code) not in documented:
                    mismatches.append(f"{case.operation.label}: {response.status_code}")
                return
            try:
                case.validate_response(response, checks=CHECKS)
            except (Exception, BaseExceptionGroup) as failure:  # each recorded, none stops it
                mismatches.append(f"{case.operation.label}: {str(failure)[:300]}")

        fuzz()

    slowest = max(costs)
    print(
        f"\nfuzzed {len(operations)} operations: {sent} requests, {len(errors)} 5xx, "
        f"{len(mismatches)} answers outside the schema; slowest server CPU "
        f"{slowest[0] * 1000:.1f} ms ({slowest[1]})"
    )
    assert len(operations) >= 20 and sent >= 200
    assert errors == [], "\n".join(errors[:20])
    assert mismatches == [], "\n".join(mismatches[:20])
    assert "Traceback" not in cluster.output()
