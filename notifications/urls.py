"""The app's URLs, included under /api/ by the project."""

from django.urls import path

from . import api

app_name = "notifications"
urlpatterns = [
    path("monitoring/email-stats", api.email_stats, name="email-stats"),
]
