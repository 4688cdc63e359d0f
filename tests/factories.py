"""factory_boy factories for queue rows; real jobs come from enqueue_email()."""

import factory
from django.core.mail import EmailMessage
from django.utils import timezone

from notifications.models import EmailJob


def make_message(index: int = 0, **overrides) -> EmailMessage:
    fields = {
        "subject": f"Message {index}",
        "body": f"Body of message {index}",
        "from_email": "sender@example.org",
        "to": [f"user{index}@example.org"],
    }
    fields.update(overrides)
    return EmailMessage(**fields)


class EmailJobFactory(factory.django.DjangoModelFactory):
    """A valid pending job built through the real enqueue path (without publishing)."""

    class Meta:
        model = EmailJob

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        from notifications.composition import job_fields

        now = timezone.now()
        fields = job_fields(make_message(kwargs.pop("index", 0)))
        fields.update(next_attempt_at=now, dispatched_at=now)
        fields.update(kwargs)
        return model_class.objects.create(**fields)
