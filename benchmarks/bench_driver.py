"""The producer side of one benchmark run, in the venv and Django project of the system measured.

Started by compare.py as `<that venv's python> bench_driver.py MODE COUNT` in the project's
directory, with DJANGO_SETTINGS_MODULE set. Needs nothing but Django (and what the project needs).
It sets Django up, empties the tables named in BENCH_CLEAR_TABLES, prints READY, waits for GO on
stdin, does its work and prints one line of JSON. Modes:

  send_mail N   send_mail() N times on this thread; {"seconds": loop time, "cpu": its CPU time}
  bulk N        N messages in one call: send_mass_mail(), or with BENCH_BULK=enqueue_emails our
                notifications.services.enqueue_emails(); {"seconds": call time}
  latency N     ours only: N times send_mail(), note the time it returned and the job's Message-ID,
                wait until the job is `sent` (idle queue) and 20 ms more; {"samples": [[id, t]]}

BENCH_PROFILE=FILE writes a cProfile of the run there (setup included). BENCH_WARM_UP=1 (send_mail
and bulk only) makes one call of the same kind, of one message, before READY: the timed calls are
then those of a process that has sent before, without the one-off costs of a first send.

The message is the one throughput.py sends (about 1 KB of text, one recipient), its Subject
numbered "#BENCH_TOKEN-N" so that the catcher tells a message sent twice from two messages.
"""

import importlib
import json
import os
import sys
import time

SENDER = "bench@example.com"
RECIPIENT = "inbox@example.com"
SUBJECT = "Your weekly summary"
BODY = (
    "Hello,\n\n"
    + "This line stands for the text of an ordinary notification e-mail.\n" * 15
    + "\nRegards,\nVertex\n"
)


def wake_ups_published() -> None:
    """Ours decides wake-ups on a thread after the commit (notifications/wakeups.py): a run ends
    when the last of them is out, as it would have before send_mail() returned."""
    wakeups = sys.modules.get("notifications.wakeups")
    if wakeups is not None:
        wakeups.flush()


def main(mode: str, count: int) -> dict:
    sys.path.insert(0, os.getcwd())
    import django

    django.setup()
    for module in filter(None, os.environ.get("BENCH_IMPORT", "").split(",")):
        importlib.import_module(module)  # e.g. the Celery app, so that publishing finds its broker
    from django.db import connection

    tables = filter(None, os.environ.get("BENCH_CLEAR_TABLES", "").split(","))
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f'DELETE FROM "{table}"')  # noqa: S608 - names from compare.py
        if connection.vendor == "sqlite":
            # The DELETE's pages would otherwise be copied into the database file by the first
            # checkpoints of the timed run, on whichever connection commits then.
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    from django.core.mail import EmailMessage, send_mail, send_mass_mail

    token = os.environ.get("BENCH_TOKEN", "x")

    def subject(number: int) -> str:  # each message numbered, so the catcher finds resends
        return f"{SUBJECT} #{token}-{number}"

    if os.environ.get("BENCH_WARM_UP"):  # a process that has sent before: one call, untimed
        if mode == "bulk" and os.environ.get("BENCH_BULK") == "enqueue_emails":
            from notifications.services import enqueue_emails

            enqueue_emails(messages=[EmailMessage("warm-up", BODY, SENDER, [RECIPIENT])])
        elif mode == "bulk":
            send_mass_mail([("warm-up", BODY, SENDER, [RECIPIENT])])
        else:
            send_mail("warm-up", BODY, SENDER, [RECIPIENT])
        wake_ups_published()
    print("READY", flush=True)
    if sys.stdin.readline().strip() != "GO":
        return {"error": "no GO"}
    if mode == "send_mail":
        start, cpu = time.perf_counter(), time.process_time()
        for number in range(count):
            send_mail(subject(number), BODY, SENDER, [RECIPIENT])
        wake_ups_published()
        return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}
    if mode == "bulk":
        start, cpu = time.perf_counter(), time.process_time()
        if os.environ.get("BENCH_BULK") == "enqueue_emails":
            from notifications.services import enqueue_emails

            enqueue_emails(
                messages=[EmailMessage(subject(n), BODY, SENDER, [RECIPIENT]) for n in range(count)]
            )
        else:
            send_mass_mail([(subject(n), BODY, SENDER, [RECIPIENT]) for n in range(count)])
        wake_ups_published()
        return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu}
    if mode == "latency":
        from notifications.models import EmailJob

        samples, slow = [], 0
        for number in range(count):
            send_mail(subject(number), BODY, SENDER, [RECIPIENT])
            returned = time.time()
            job = EmailJob.objects.order_by("-pk").values_list("pk", "message_id")[0]
            samples.append([job[1], returned])
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if EmailJob.objects.filter(pk=job[0], status=EmailJob.Status.SENT).exists():
                    break
                time.sleep(0.002)
            else:
                slow += 1
            time.sleep(0.02)
        return {"samples": samples, "not_sent_within_5s": slow}
    return {"error": f"unknown mode {mode!r}"}


if __name__ == "__main__":
    if os.environ.get("BENCH_PROFILE"):  # cProfile of the whole run, to that file
        import cProfile

        profiler = cProfile.Profile()
        result = profiler.runcall(main, sys.argv[1], int(sys.argv[2]))
        profiler.dump_stats(os.environ["BENCH_PROFILE"])
    else:
        result = main(sys.argv[1], int(sys.argv[2]))
    print(json.dumps(result), flush=True)
