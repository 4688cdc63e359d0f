"""ASGI entry point."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vertex_email.settings")
application = get_asgi_application()

from notifications.startup import refuse_unsafe_configuration  # noqa: E402 - needs the apps

refuse_unsafe_configuration("the web server")
