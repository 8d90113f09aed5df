"""The bridge's process fixtures (FakeKoboldAI, the bridge), for the front-end e2e tests."""

from bridge.tests.conftest import bridge_process, kai_double  # noqa: F401 (fixtures)
