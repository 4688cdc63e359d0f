"""Every Prometheus metric of the queue, defined once. (Filled in by the metrics issue.)"""


def observe_attempt(*, outcome: str, duration: float) -> None:
    """Called once per settled SMTP attempt, in the worker process that made it."""
