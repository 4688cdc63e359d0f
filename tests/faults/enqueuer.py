"""One of the concurrent producers of scenario 8, run as its own process.

python -m tests.faults.enqueuer INDEX COUNT MODE GO_FILE: sets Django up, prints "ready", waits
for GO_FILE to exist, so that all producers start at once, then enqueues COUNT messages through
Django's mail API, one send_mail() each (MODE "single") or send_mass_mail() in chunks of 50 (MODE
"mass"). Database and broker come from DATABASE_URL and CELERY_BROKER_URL.
"""

import os
import sys
import time
from pathlib import Path


def main(index: int, count: int, mode: str, go_file: Path) -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vertex_email.settings")
    import django

    django.setup()
    from django.core.mail import send_mail, send_mass_mail

    messages = [
        (f"Load {index}-{i}", "Body\n", "from@example.org", [f"p{index}-{i}@example.org"])
        for i in range(count)
    ]
    print("ready", flush=True)
    while not go_file.exists():
        time.sleep(0.01)
    started = time.monotonic()
    if mode == "single":
        for subject, body, sender, recipients in messages:
            send_mail(subject, body, sender, recipients)
    else:
        for start in range(0, count, 50):
            send_mass_mail(messages[start : start + 50])
    print(f"producer {index}: {count} enqueued ({mode}) in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
