"""A real SMTP server (aiosmtpd on 127.0.0.1) that records every message and can be told to fail."""

import asyncio
import email
import email.policy
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    received_at: float = field(default_factory=time.time)

    @property
    def message(self) -> email.message.EmailMessage:
        # SMTP carries CRLF line ends; read it as a mail store would, with local ones.
        content = self.content.replace(b"\r\n", b"\n")
        return email.message_from_bytes(content, policy=email.policy.default)

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


@dataclass
class SinkHandler:
    messages: list[Received] = field(default_factory=list)
    data_replies: list[str] = field(default_factory=list)  # replies for the next DATA commands
    refused: dict[str, str] = field(default_factory=dict)  # recipient -> RCPT reply
    refused_senders: dict[str, str] = field(default_factory=dict)  # sender -> MAIL reply
    accept_delay: float = 0.0  # seconds to wait after storing, before replying 250
    delays: dict[str, float] = field(default_factory=dict)  # recipient -> its own accept_delay
    greetings: int = 0  # EHLO/HELO commands seen: one per connection
    receiving: int = 0  # DATA commands being answered now
    most_at_once: int = 0  # the most DATA commands answered at the same time
    # Offered in the EHLO reply, as Postfix, Exim and the big providers do; aiosmtpd reads
    # commands from the stream one at a time, so pipelined ones are answered in order.
    pipelining: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.messages.clear()
            self.data_replies.clear()
            self.refused.clear()
            self.refused_senders.clear()
            self.accept_delay = 0.0
            self.delays.clear()
            self.greetings = 0
            self.most_at_once = 0
            self.pipelining = True

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.greetings += 1
        if self.pipelining:  # before the last line, "250 HELP"
            return [*responses[:-1], "250-PIPELINING", responses[-1]]
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address in self.refused_senders:
            return self.refused_senders[address]
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refused:
            return self.refused[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            if self.data_replies:
                return self.data_replies.pop(0)
            self.messages.append(
                Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
            )
            self.receiving += 1
            self.most_at_once = max(self.most_at_once, self.receiving)
        delay = max((self.delays.get(r, self.accept_delay) for r in envelope.rcpt_tos), default=0)
        try:
            if delay:
                await asyncio.sleep(delay)
        finally:
            with self.lock:
                self.receiving -= 1
        return "250 Message accepted for delivery"

    # What tests assert on --------------------------------------------------------------------
    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def by_message_id(self) -> Counter:
        with self.lock:
            return Counter(received.message_id for received in self.messages)


class Credentials:
    """An authenticator that accepts one username and password (AUTH over plain TCP, for tests)."""

    def __init__(self, username: str, password: str):
        self.username, self.password = username.encode(), password.encode()
        self.failures = 0

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if (auth_data.login, auth_data.password) == (self.username, self.password):
            return AuthResult(success=True)
        self.failures += 1
        return AuthResult(success=False, handled=False)  # handled=False: reply 535


class SmtpSink:
    def __init__(self, port: int, credentials: Credentials | None = None):
        self.handler = SinkHandler()
        self.credentials = credentials
        auth = {"authenticator": credentials, "auth_require_tls": False, "auth_required": True}
        self.controller = Controller(
            self.handler, hostname="127.0.0.1", port=port, **(auth if credentials else {})
        )
        self.port = port

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()
