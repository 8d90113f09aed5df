"""`instance()`: model instances built from hand-read rows behave as the ORM's own."""

from __future__ import annotations

import pytest

from accounts.models import User
from koboldcluster.rows import instance
from servers.models import Server

pytestmark = pytest.mark.django_db


@pytest.fixture
def server() -> Server:
    owner = User.objects.create(username="bob")
    return Server.objects.create(name="bob-1", owner=owner, models=["m"], max_length=80)


def test_an_instance_is_the_row_the_orm_reads(server):
    owner = User.objects.get(pk=server.owner_id)

    built = instance(Server, id=server.pk, name="bob-1", owner=owner, models=["m"], max_length=80)

    assert built == Server.objects.get(pk=server.pk)
    assert (built.name, built.models, built.max_length) == ("bob-1", ["m"], 80)
    assert built.owner is owner and built.owner_id == owner.pk
    assert not built._state.adding and built._state.db == "default"


def test_fields_not_given_are_deferred_and_read_when_used(server, django_assert_num_queries):
    built = instance(Server, id=server.pk, owner_id=server.owner_id)

    assert "name" in built.get_deferred_fields()
    with django_assert_num_queries(1):
        assert built.name == "bob-1"


def test_an_instance_saves_like_one_read_by_the_orm(server):
    built = instance(Server, id=server.pk, owner_id=server.owner_id, max_length=80)
    built.max_length = 120

    built.save(update_fields=["max_length"])

    assert Server.objects.get(pk=server.pk).max_length == 120


def test_an_unknown_field_is_refused():
    with pytest.raises(TypeError, match="Server has no field colour"):
        instance(Server, colour="red")
