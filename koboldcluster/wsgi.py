"""WSGI entry point: `manage.py runserver` and any WSGI server (run.sh serves ASGI)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "koboldcluster.settings")

application = get_wsgi_application()
