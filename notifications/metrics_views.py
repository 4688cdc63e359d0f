"""/metrics: django-prometheus' metrics and the queue's, behind an optional token and allow-list.

Access (settings NOTIFICATIONS["METRICS_*"]): every rule that is configured must pass, the client
address first, then the bearer token. With neither configured /metrics is open, except in
production, where it answers 403 until one is. The token is compared in constant time and never
logged.
"""

import hmac
import ipaddress
import logging
from collections.abc import Iterable
from functools import lru_cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from .conf import option
from .metrics import QueueCollector

logger = logging.getLogger(__name__)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@never_cache
@require_safe
def metrics(request: HttpRequest) -> HttpResponse:
    refusal = _refusal(request)
    if refusal is not None:
        return refusal
    return HttpResponse(generate_latest(_registry()), content_type=CONTENT_TYPE_LATEST)


class _ThisProcess:
    """The metrics this process keeps in memory (django-prometheus' and the client's defaults)."""

    def collect(self):
        return REGISTRY.collect()


def _registry() -> CollectorRegistry:
    """A registry per scrape: this process's or every web process's metrics, and the queue's."""
    registry = CollectorRegistry()
    if settings.PROMETHEUS_MULTIPROC_DIR:  # several gunicorn workers, each with its own files
        MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
    else:
        registry.register(_ThisProcess())
    registry.register(QueueCollector())
    return registry


def _refusal(request: HttpRequest) -> HttpResponse | None:
    token, allowed = option("METRICS_BEARER_TOKEN"), option("METRICS_ALLOWED_IPS")
    client = request.META.get("REMOTE_ADDR", "")
    if not token and not allowed:
        if settings.IS_PRODUCTION:
            return _deny(
                403,
                client,
                "no METRICS_BEARER_TOKEN or METRICS_ALLOWED_IPS is configured, and this is "
                "production",
            )
        return None
    if allowed and not _address_allowed(client, allowed):
        return _deny(403, client, "the address is not in METRICS_ALLOWED_IPS")
    if token and not _token_matches(request, token):
        response = _deny(401, client, "missing or wrong bearer token")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    return None


def _deny(status: int, client: str, reason: str) -> HttpResponse:
    logger.warning("metrics: scrape from %s refused: %s", client, reason)
    text = {401: "Unauthorized", 403: "Forbidden"}[status]
    return HttpResponse(f"{text}\n", status=status, content_type="text/plain")


def _token_matches(request: HttpRequest, expected: str) -> bool:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        presented = ""
    return hmac.compare_digest(presented.strip().encode(), expected.encode())


def _address_allowed(client: str, entries: Iterable[str]) -> bool:
    try:
        networks = _networks(tuple(entries))
    except ValueError as error:  # fail closed: a typo must not open the endpoint
        logger.error("metrics: METRICS_ALLOWED_IPS is invalid, every scrape is refused: %s", error)
        return False
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return any(address in network for network in networks)


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    """Addresses or networks (10.0.0.0/8, ::1); a bare address is a network of one."""
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in entries)
