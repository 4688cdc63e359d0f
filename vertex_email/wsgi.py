"""WSGI entry point (gunicorn vertex_email.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vertex_email.settings")
application = get_wsgi_application()

from notifications.startup import refuse_unsafe_configuration  # noqa: E402 - needs the apps

refuse_unsafe_configuration("the web server")
