"""The bridge's process fixtures (FakeKoboldAI, the bridge), for the front-end e2e tests, and
the one small server the real front-ends (the `external` tests) are connected to."""

from bridge.tests.conftest import bridge_process, kai_double  # noqa: F401 (fixtures)
from generations.tests.frontends import server_seconds, small_server  # noqa: F401 (fixtures)


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 (pytest's reporter)
    """The time from Submit to first text each real front-end measured (`external` tests)."""
    what = {"submit_to_first_text_s": "", "submit_to_error_s": " (the error shown)"}
    lines = [
        f"{report.nodeid.split('::')[-1]}: {value} s{what[name]}"
        for report in terminalreporter.stats.get("passed", [])
        for name, value in getattr(report, "user_properties", [])
        if name in what
    ]
    if lines:
        terminalreporter.write_sep("-", "Submit to first text, in the real front-ends")
        for line in lines:
            terminalreporter.write_line(line)
