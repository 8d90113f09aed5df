"""Django's SQLite backend, with each statement's placeholders converted once, not every time.

Django writes its statements with `%s` placeholders and its SQLite cursor rewrites them to
SQLite's `?` with a regular expression before every execution (`convert_query`). The cluster
sends the same few statements over and over (a generation is about ten of them: the hot paths'
SQL is fixed text, the ORM's few are too), so the rewritten text is kept per statement text:
the regular expression ran for about 3 % of a hot request's CPU time (docs/benchmarks.md,
"Through HTTP"). Everything else is Django's backend, unchanged; settings.py names this module
as the ENGINE for a `sqlite://` DATABASE_URL.
"""

from __future__ import annotations

from functools import lru_cache

from django.db.backends.sqlite3 import base


@lru_cache(maxsize=2048)
def _in_qmark_style(query: str) -> str:
    """What Django's SQLiteCursorWrapper.convert_query makes of a "format" style statement."""
    return base.FORMAT_QMARK_REGEX.sub("?", query).replace("%%", "%")


class SQLiteCursorWrapper(base.SQLiteCursorWrapper):
    def convert_query(self, query: str, *, param_names: list[str] | None = None) -> str:
        if param_names is None:
            return _in_qmark_style(query)
        return super().convert_query(query, param_names=param_names)


class DatabaseWrapper(base.DatabaseWrapper):
    def create_cursor(self, name: str | None = None) -> SQLiteCursorWrapper:
        return self.connection.cursor(factory=SQLiteCursorWrapper)
