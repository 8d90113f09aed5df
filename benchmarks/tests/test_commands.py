"""The benchmark commands are where docs/benchmarks.md says, under the names it documents
(issue 24: benchmarks in their own app, apart from the code they measure)."""

from __future__ import annotations

from django.core.management import get_commands, load_command_class

DOCUMENTED = (
    "benchmark",
    "benchmark_dispatch",
    "benchmark_failover",
    "benchmark_stream",
    "stats_benchmark",
)


def test_every_documented_benchmark_command_is_the_benchmarks_apps():
    commands = get_commands()

    assert {name: commands.get(name) for name in DOCUMENTED} == dict.fromkeys(
        DOCUMENTED, "benchmarks"
    )
    assert sorted(n for n, app in commands.items() if "bench" in n and app != "benchmarks") == []


def test_every_benchmark_command_builds_its_options():
    """Loading a command imports all it needs (the bridge's doubles, the HTTP driver), which
    a moved module would break; its parser lists the options its --help shows."""
    for name in DOCUMENTED:
        parser = load_command_class("benchmarks", name).create_parser("manage.py", name)
        assert parser.format_help().startswith(f"usage: manage.py {name}")
