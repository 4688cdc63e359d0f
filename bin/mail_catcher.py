#!/usr/bin/env python3
"""Development mail catcher: an SMTP server that keeps what it receives and lists it on a web page.

Never expose it: it accepts mail for anyone and shows it to anyone who can reach the web port.
Messages live in memory (the newest --keep of them) and are gone when it stops.

    GET /                   HTML list, newest first
    GET /messages/<id>      one message: headers and text part (HTML parts are never rendered)
    GET /messages/<id>.eml  the raw message as received
    GET /api/messages       JSON list (id, received_at, mail_from, rcpt_tos, subject, size)
    DELETE /api/messages    forget every message
"""

import argparse
import email
import email.policy
import html
import json
import re
import signal
import sys
import threading
from collections import deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller


class Mailbox:
    """The received messages, newest last, shared by the SMTP thread and the web threads."""

    def __init__(self, keep: int) -> None:
        self._messages: deque[dict] = deque(maxlen=keep)
        self._lock = threading.Lock()
        self._next_id = 1

    def add(self, *, mail_from: str, rcpt_tos: list[str], data: bytes) -> int:
        parsed = email.message_from_bytes(data, policy=email.policy.default)
        with self._lock:
            message_id, self._next_id = self._next_id, self._next_id + 1
            self._messages.append(
                {
                    "id": message_id,
                    "received_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "mail_from": mail_from,
                    "rcpt_tos": rcpt_tos,
                    "subject": str(parsed.get("Subject", "")),
                    "size": len(data),
                    "data": data,
                }
            )
        return message_id

    def summaries(self) -> list[dict]:
        with self._lock:
            return [{k: v for k, v in m.items() if k != "data"} for m in reversed(self._messages)]

    def get(self, message_id: int) -> dict | None:
        with self._lock:
            return next((m for m in self._messages if m["id"] == message_id), None)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()


class SmtpHandler:
    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_DATA(self, server, session, envelope) -> str:
        message_id = self.mailbox.add(
            mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos), data=envelope.content
        )
        print(
            f"received #{message_id} from {envelope.mail_from} to {', '.join(envelope.rcpt_tos)}",
            flush=True,
        )
        return "250 Message accepted for delivery"


def _text_part(data: bytes) -> str:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    headers = "\n".join(f"{name}: {value}" for name, value in parsed.items())
    part = parsed.get_body(preferencelist=("plain",))
    body = part.get_content() if part is not None else "(no text/plain part; see the raw message)"
    return f"{headers}\n\n{body}"


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}
pre{{white-space:pre-wrap}}</style></head><body>{body}</body></html>"""


def make_handler(mailbox: Mailbox) -> type[BaseHTTPRequestHandler]:
    class WebHandler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/":
                return self._send(200, "text/html", self._index())
            if self.path == "/api/messages":
                return self._send(200, "application/json", json.dumps(mailbox.summaries()))
            match = re.fullmatch(r"/messages/(\d+)(\.eml)?", self.path)
            message = mailbox.get(int(match.group(1))) if match else None
            if message is None:
                return self._send(404, "text/plain", "not found")
            if match.group(2):
                return self._send(200, "message/rfc822", message["data"])
            title = html.escape(message["subject"] or "(no subject)")
            body = (
                f'<p><a href="/">all messages</a> | <a href="/messages/{message["id"]}.eml">raw</a>'
                f"</p><h1>{title}</h1><pre>{html.escape(_text_part(message['data']))}</pre>"
            )
            return self._send(200, "text/html", PAGE.format(title=title, body=body))

        def do_DELETE(self) -> None:
            if self.path != "/api/messages":
                return self._send(404, "text/plain", "not found")
            mailbox.clear()
            return self._send(204, "text/plain", "")

        def _index(self) -> str:
            rows = "".join(
                f'<tr><td><a href="/messages/{m["id"]}">{m["id"]}</a></td>'
                f"<td>{html.escape(m['received_at'])}</td><td>{html.escape(m['mail_from'])}</td>"
                f"<td>{html.escape(', '.join(m['rcpt_tos']))}</td>"
                f"<td>{html.escape(m['subject'])}</td><td>{m['size']}</td></tr>"
                for m in mailbox.summaries()
            )
            table = (
                "<table><tr><th>#</th><th>received</th><th>from</th><th>to</th><th>subject</th>"
                f"<th>bytes</th></tr>{rows}</table>"
                if rows
                else "<p>No mail yet.</p>"
            )
            return PAGE.format(title="Mail catcher", body=f"<h1>Mail catcher</h1>{table}")

        def _send(self, status: int, content_type: str, body: str | bytes) -> None:
            payload = body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", f"{content_type}; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args) -> None:  # quiet: the SMTP side logs receipts
            pass

    return WebHandler


def _address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smtp", type=_address, default="127.0.0.1:1025", help="host:port")
    parser.add_argument("--http", type=_address, default="127.0.0.1:1080", help="host:port")
    parser.add_argument("--keep", type=int, default=1000, help="messages kept in memory")
    args = parser.parse_args()

    mailbox = Mailbox(args.keep)
    try:
        web = ThreadingHTTPServer(args.http, make_handler(mailbox))
    except OSError as exc:
        sys.exit(f"mail catcher: cannot listen for HTTP on {args.http[0]}:{args.http[1]}: {exc}")
    smtp = Controller(SmtpHandler(mailbox), hostname=args.smtp[0], port=args.smtp[1])
    try:
        smtp.start()
    except Exception as exc:
        sys.exit(f"mail catcher: cannot listen for SMTP on {args.smtp[0]}:{args.smtp[1]}: {exc}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(
        f"mail catcher: SMTP on {args.smtp[0]}:{args.smtp[1]}, "
        f"web on http://{args.http[0]}:{args.http[1]}/",
        flush=True,
    )
    try:
        web.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        smtp.stop()
        web.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
