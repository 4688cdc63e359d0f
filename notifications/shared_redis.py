"""The Redis that workers share for metric tallies, rate limits and the circuit breaker."""

import redis
from django.conf import settings

TIMEOUT = 2.0  # seconds; a sick Redis must not hold up a worker for long

_clients: dict[str, redis.Redis] = {}


def client(url: str | None = None) -> redis.Redis:
    """A client for `url` (default EMAIL_REDIS_URL, itself the broker by default), one per URL;
    redis-py's pool reconnects by itself in a forked worker process."""
    url = url or settings.EMAIL_REDIS_URL
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(
            url, socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT
        )
    return _clients[url]
