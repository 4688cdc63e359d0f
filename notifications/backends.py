"""The Django e-mail backend that queues: send_mail() and friends create jobs, workers send."""

import logging

from django.core.mail.backends.base import BaseEmailBackend

from . import services
from .exceptions import EmailRejected

logger = logging.getLogger(__name__)


class QueuedEmailBackend(BaseEmailBackend):
    def send_messages(self, email_messages) -> int:
        if not email_messages:
            return 0
        try:
            jobs = services.enqueue_emails(messages=email_messages)
        except EmailRejected:
            if not self.fail_silently:
                raise
            logger.warning("email refused at enqueue (fail_silently)", exc_info=True)
            return 0
        return len(jobs)
