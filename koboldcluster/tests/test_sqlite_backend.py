"""The SQLite backend (koboldcluster/sqlite_backend): Django's, with each statement's
placeholders converted once; the converted text is exactly what Django's cursor makes."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.backends.sqlite3.base import SQLiteCursorWrapper as DjangosCursor

from koboldcluster.sqlite_backend.base import SQLiteCursorWrapper, _in_qmark_style

STATEMENTS = [
    "SELECT 1",
    "SELECT %s, %s FROM t WHERE a = %s",
    "SELECT '100%%' || %s",  # a literal percent sign, written %% in Django's style
    "UPDATE t SET x = %s WHERE y LIKE '%%a%%'",
]


@pytest.mark.parametrize("statement", STATEMENTS)
def test_a_statement_is_converted_as_djangos_cursor_converts_it(statement):
    djangos = DjangosCursor.convert_query(None, statement)

    assert SQLiteCursorWrapper.convert_query(None, statement) == djangos
    assert SQLiteCursorWrapper.convert_query(None, statement) == djangos  # from the cache


@pytest.mark.django_db
def test_sqlite_runs_on_it_and_postgresql_on_djangos_own():
    if connection.vendor != "sqlite":
        assert connection.settings_dict["ENGINE"] == "django.db.backends.postgresql"
        return
    assert connection.settings_dict["ENGINE"] == "koboldcluster.sqlite_backend"
    _in_qmark_style.cache_clear()
    with connection.cursor() as cursor:
        cursor.execute("SELECT %s || '%%'", ["7"])
        assert cursor.fetchone() == ("7%",)
        cursor.execute("SELECT %(a)s || %(b)s", {"a": "x", "b": "y"})  # named: Django's way
        assert cursor.fetchone() == ("xy",)
    assert _in_qmark_style.cache_info().currsize == 1
