"""KoboldAI Cluster bridge: connects a local KoboldAI to the cluster as one of its servers.

Standalone on purpose: it runs on volunteers' PCs, so it needs only the standard library and
`requests`, and it imports nothing from the cluster's Django code.
"""

from __future__ import annotations

__version__ = "1.0.0"

# Sent to the cluster as `bridge_agent` ("name:version:url"), the shape the AI Horde uses.
# The project has no public home yet, so the contact part is `unknown`, the AI Horde's own
# word for a missing one (its default agent is `unknown:0:unknown`), rather than a made-up URL.
AGENT_NAME = "KoboldAI Cluster Bridge"
AGENT_URL = "unknown"
BRIDGE_AGENT = f"{AGENT_NAME}:{__version__}:{AGENT_URL}"
