import io
import sys
from typing import Any

from django.apps import AppConfig
from django.db import DEFAULT_DB_ALIAS
from django.db.models.signals import post_migrate


class GenerationsConfig(AppConfig):
    name = "generations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(register_schedules, sender=self)


def register_schedules(verbosity: int = 1, using: str = DEFAULT_DB_ALIAS, **kwargs: Any) -> None:
    """After every `migrate`: the scheduled tasks (purge, reaper, fold, statistics) in place.

    Without them no prompt is ever wiped. `./run.sh` runs `ensure_schedules` too, but the
    Django way (`migrate`, `runserver`, `qcluster`) never did: now migrating is enough, and
    the command stays for changed intervals without a migration.
    """
    if using != DEFAULT_DB_ALIAS:
        return  # the command works on the default database
    from django.core.management import call_command

    call_command("ensure_schedules", stdout=sys.stdout if verbosity >= 1 else io.StringIO())
