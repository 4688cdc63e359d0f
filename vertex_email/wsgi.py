"""WSGI entry point (gunicorn vertex_email.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vertex_email.settings")
application = get_wsgi_application()
