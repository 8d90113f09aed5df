"""KoboldAI Cluster bridge: connects a local KoboldAI to the cluster as one of its servers.

Standalone on purpose: it runs on volunteers' PCs, so it needs only the standard library and
`requests`, and it imports nothing from the cluster's Django code.
"""

from __future__ import annotations

__version__ = "1.0.0"

# Sent to the cluster as `bridge_agent` ("name:version:url"), the shape the AI Horde uses.
# The project has no public home yet; the reserved `.invalid` domain marks the placeholder
# until the repository URL is known, rather than pointing at someone else's project.
AGENT_NAME = "KoboldAI Cluster Bridge"
AGENT_URL = "https://koboldai-cluster.invalid/bridge"
BRIDGE_AGENT = f"{AGENT_NAME}:{__version__}:{AGENT_URL}"
