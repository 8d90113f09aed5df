from django.apps import AppConfig


class BenchmarksConfig(AppConfig):
    """What the cluster costs, measured: the `benchmark*` and `stats_benchmark` commands and
    their support code, apart from the apps they measure. An app only so that Django finds
    its management commands; it has no models. It may import any app; no app imports it
    (koboldcluster/tests/test_layers.py)."""

    name = "benchmarks"
    verbose_name = "Benchmarks"
