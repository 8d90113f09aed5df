"""One store per database (generations/stores/): each database's module answers every step of
the one interface the use cases call, and the use cases get the module of their database."""

from __future__ import annotations

import inspect

import pytest
from django.db import connection

from generations.stores import Store, postgresql, sqlite, store


def steps() -> dict[str, list[str]]:
    """The interface's steps and their parameters (without `self`)."""
    return {
        name: list(inspect.signature(member).parameters)[1:]
        for name, member in vars(Store).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }


def test_the_interface_has_the_steps_of_submit_pop_and_create():
    assert {"accept_before_lookup", "claim", "insert_prompt"} <= steps().keys()


@pytest.mark.parametrize("module", [sqlite, postgresql], ids=["sqlite", "postgresql"])
def test_each_databases_store_takes_every_step_with_the_same_parameters(module):
    for name, parameters in steps().items():
        function = getattr(module, name, None)
        assert callable(function), f"{module.__name__} has no {name}"
        assert list(inspect.signature(function).parameters) == parameters, name


def test_the_store_is_the_connections_databases():
    expected = {"sqlite": sqlite, "postgresql": postgresql}[connection.vendor]
    assert store() is expected
