"""Every HTTP call to the cluster lives in this package.

The worker loop sees only `ClusterProtocol`: pop a job, submit a text, give a job back. Two
implementations speak it, chosen with `--protocol` through `PROTOCOLS`:

- `OriginalClusterProtocol` (`original`): the original KoboldAI Cluster API, `/generate/pop`
  and `/generate/submit`, with a username and password or an API key;
- `HordeProtocol` (`horde`): the AI Horde v2 text API, `/api/v2/generate/text/pop` and
  `/api/v2/generate/text/submit`, with an API key, so the bridge can join any AI
  Horde-compatible cluster (ours serves both).

Both long-poll when `pop_wait` > 0: the pop asks the cluster to hold it up to that many
seconds until a job arrives (`"wait"`). A cluster that refuses the field (400 naming `wait`)
gets plain pops from then on (`pop_wait` drops to 0); one that ignores it answers at once,
which the worker notices on its clock, so that it sleeps its poll interval as before.
"""

from __future__ import annotations

from bridge.cluster.base import (
    ANONYMOUS_KEY,
    CREDENTIAL_CODES,
    Capabilities,
    ClusterError,
    ClusterProtocol,
    ClusterRejected,
    ClusterUnavailable,
    Job,
    NotACluster,
    NoWork,
    Submitted,
)
from bridge.cluster.horde import HordeProtocol
from bridge.cluster.original import OriginalClusterProtocol

__all__ = [
    "ANONYMOUS_KEY",
    "CREDENTIAL_CODES",
    "PROTOCOLS",
    "Capabilities",
    "ClusterError",
    "ClusterProtocol",
    "ClusterRejected",
    "ClusterUnavailable",
    "HordeProtocol",
    "Job",
    "NoWork",
    "NotACluster",
    "OriginalClusterProtocol",
    "Submitted",
]

# The --protocol option's values -> implementation (config.PROTOCOL_NAMES lists the same).
PROTOCOLS: dict[str, type[OriginalClusterProtocol] | type[HordeProtocol]] = {
    "original": OriginalClusterProtocol,
    "horde": HordeProtocol,
}
