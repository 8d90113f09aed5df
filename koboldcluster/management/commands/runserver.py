"""`manage.py runserver`: the cluster's ASGI application for development, reloading on changes.

Django's own runserver serves WSGI, which `./run.sh` never does: there long-poll pops held a
thread, the waiting front-end requests ran in an event loop of their own, and neither the
direct lane nor the entry's holding took part. So a developer saw another server than
`./run.sh` runs. This one keeps runserver's arguments, its checks and Django's autoreloader,
and serves the same application as `./run.sh` (`koboldcluster.asgi:application`, the one
entry), through uvicorn in the reloaded process, on asyncio's loop and without the head time
limit and worker processes of `./run.sh`'s server (koboldcluster/serve.py).
"""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import CommandError
from django.core.management.commands import runserver
from django.db import connections
from django.utils import autoreload


class Command(runserver.Command):
    help = (
        "Serve the cluster's ASGI application (what ./run.sh serves) through uvicorn for "
        "development, restarting it when the code changes."
    )

    def inner_run(self, *args: Any, **options: Any) -> None:
        autoreload.raise_last_exception()  # one the reloader's parent silenced, as Django's
        try:
            import uvicorn
        except ImportError as missing:
            raise CommandError(
                "runserver serves the ASGI application with uvicorn: "
                ".venv/bin/pip install -r requirements.txt"
            ) from missing
        if not options["skip_checks"]:
            self.stdout.write("Performing system checks...\n\n")
            self.check(display_num_errors=True)
        self.check_migrations()
        for connection in connections.all(initialized_only=True):
            connection.close()  # opened by the checks, on this thread

        from koboldcluster.asgi import application

        host = "0.0.0.0" if self.addr == "0" else self.addr  # noqa: S104 - as Django's runserver
        self.on_bind(self.port)
        config = uvicorn.Config(
            application, host=host, port=int(self.port), lifespan="off", loop="asyncio"
        )
        try:
            uvicorn.Server(config).run()
        except KeyboardInterrupt:
            sys.exit(0)
