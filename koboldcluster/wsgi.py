"""WSGI entry point: `gunicorn koboldcluster.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "koboldcluster.settings")

application = get_wsgi_application()
