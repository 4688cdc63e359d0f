"""JSON endpoints for monitoring the queue: staff with the view permission only, no redirects."""

from collections.abc import Callable
from functools import wraps

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from .selectors import queue_stats, recent_errors

RECENT_ERRORS = 10


def staff_permission_required(permission: str) -> Callable:
    """401 for anonymous requests, 403 unless an active staff user with `permission`.

    An API answers with a status, not with a redirect to the admin's login page.
    """

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def checked(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            user = request.user
            if not user.is_authenticated:
                return JsonResponse({"detail": "Authentication required."}, status=401)
            if not (user.is_active and user.is_staff and user.has_perm(permission)):
                return JsonResponse({"detail": "Permission denied."}, status=403)
            return view(request, *args, **kwargs)

        return checked

    return decorator


@require_GET
@never_cache
@staff_permission_required("notifications.view_emailjob")
def email_stats(request: HttpRequest) -> JsonResponse:
    """`email_queue stats --json` plus the latest errors (job id, time, code, text)."""
    return JsonResponse({**queue_stats(), "recent_errors": recent_errors(limit=RECENT_ERRORS)})
