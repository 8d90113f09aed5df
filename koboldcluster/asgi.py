"""ASGI entry point, what `./run.sh` serves (granian, `koboldcluster.asgi:application`).

Ordinary views stay synchronous Django (run in a thread per request); the waiting ones (long-poll
pops) are `async` and hold no thread while they wait.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "koboldcluster.settings")
# Tells settings.py to give each web process a database connection pool (PostgreSQL).
os.environ["KOBOLDCLUSTER_SERVING"] = "asgi"

application = get_asgi_application()
