"""Root URLs: the admin (and a short address for its settings page), the stats API, /metrics."""

from django.contrib import admin
from django.urls import include, path, reverse_lazy
from django.views.generic import RedirectView

from notifications import metrics_views

urlpatterns = [
    # A short address for the settings page; admin_view sends whoever isn't staff to the login.
    path(
        "admin/notification-settings/",
        admin.site.admin_view(
            RedirectView.as_view(
                url=reverse_lazy("admin:notifications_notificationsettings_change", args=[1])
            )
        ),
        name="notification_settings",
    ),
    path("admin/", admin.site.urls),
    path("api/", include("notifications.urls")),
    # django-prometheus' metrics and the queue's, behind the METRICS_* access rules.
    path("metrics", metrics_views.metrics, name="metrics"),
]
