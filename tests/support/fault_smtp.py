"""A fault-injecting SMTP server: aiosmtpd behind a small TCP proxy, both on 127.0.0.1.

The proxy owns the public port, so the server can be stopped and started again on that port (its
clients then see refused connections) and can cut a connection in the middle of DATA, which
aiosmtpd alone cannot do: its handle_DATA runs only once the whole message is in. The aiosmtpd
handler answers the scripted replies (4xx for a seeded fraction or the first N messages, 5xx for
chosen recipients, 535 to AUTH, 454 to STARTTLS) and stalls past the client's timeout after
storing a message, which reproduces the RFC 1047 gap. Every stored copy is counted by Message-ID.
"""

import asyncio
import email.parser
import email.policy
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from tests.support.processes import free_port

TERMINATOR = b"\r\n.\r\n"
# aiosmtpd warns at every AUTH about its own deprecated attribute; it says nothing about us.
logging.getLogger("mail.log").addFilter(lambda record: "login_data" not in record.getMessage())


@dataclass
class Faults:
    """What the server does wrong; change it while the server runs with `configure()`."""

    seed: int = 0
    transient_rate: float = 0.0  # this fraction of DATA commands is answered with a 4xx
    transient_first: int = 0  # ... and so are the next N DATA commands
    transient_codes: tuple[int, ...] = (451,)
    refuse_rcpt: dict[str, str] = field(default_factory=dict)  # recipient -> "550 ..." at RCPT
    refuse_data: dict[str, str] = field(default_factory=dict)  # recipient -> "554 ..." at DATA
    stall_first: int = 0  # the next N messages are stored, then answered after stall_seconds
    stall_seconds: float = 0.0
    drop_first: int = 0  # the proxy cuts the next N DATA transfers ...
    drop_rate: float = 0.0  # ... and this fraction of them ...
    drop_after_bytes: int = 512  # ... after this many bytes of message data
    credentials: tuple[str, str] | None = None  # AUTH accepts only these; None: AUTH optional
    starttls: str = "absent"  # "absent": not advertised; "454": advertised, answered 454

    def __post_init__(self) -> None:
        self.random = random.Random(self.seed)


TRANSIENT_TEXT = {
    421: "421 4.3.2 Service shutting down, try again later",
    450: "450 4.2.1 Mailbox busy, try again later",
    451: "451 4.3.0 Local error in processing, try again later",
    452: "452 4.3.1 Insufficient system storage",
}


def message_id_of(content: bytes) -> str:
    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(content)
    return str(headers["Message-ID"] or "").strip()


@dataclass
class Event:
    kind: str  # accepted | transient | refused | stalled | dropped | auth_refused
    message_id: str = ""
    code: int | None = None


class FaultHandler:
    """The aiosmtpd handler: answers as `faults` says and records what happened."""

    def __init__(self, owner: "FaultSmtpServer"):
        self.owner = owner

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        with self.owner.lock:
            self.owner.greetings += 1
            advertise = self.owner.faults.starttls == "454"
        if advertise:  # no TLS context, so aiosmtpd answers STARTTLS with 454
            responses.insert(1, "250-STARTTLS")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.owner.faults.refuse_rcpt.get(address)
        if reply:
            self.owner.record(Event("refused", code=int(reply[:3])))
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        owner, message_id = self.owner, message_id_of(envelope.content)
        with owner.lock:
            faults = owner.faults
            refused = next(
                (faults.refuse_data[r] for r in envelope.rcpt_tos if r in faults.refuse_data), None
            )
            if refused:
                owner.events.append(Event("refused", message_id, int(refused[:3])))
                return refused
            transient = faults.transient_first > 0 or (
                faults.transient_rate and faults.random.random() < faults.transient_rate
            )
            if transient:
                faults.transient_first = max(0, faults.transient_first - 1)
                code = faults.random.choice(faults.transient_codes)
                owner.events.append(Event("transient", message_id, code))
                return TRANSIENT_TEXT[code]
            owner.received.append(envelope.content)
            owner.events.append(Event("accepted", message_id, 250))
            # each message stalls at most once, so its retry can get through
            stall = faults.stall_first > 0 and message_id not in owner.stalled
            if stall:
                owner.stalled.add(message_id)
                faults.stall_first -= 1
                owner.events.append(Event("stalled", message_id))
        if owner.on_accept is not None:  # in a thread: it may use the database
            await asyncio.get_running_loop().run_in_executor(None, owner.on_accept, message_id)
        if stall:  # stored already: a client that gives up now has delivered it (RFC 1047)
            await asyncio.sleep(faults.stall_seconds)
        return "250 2.0.0 Message accepted for delivery"


class Authenticator:
    def __init__(self, owner: "FaultSmtpServer"):
        self.owner = owner

    def __call__(self, server, session, envelope, mechanism, auth_data):
        wanted = self.owner.faults.credentials
        given = (auth_data.login.decode(), auth_data.password.decode())
        if wanted is None or given == wanted:
            return AuthResult(success=True)
        self.owner.record(Event("auth_refused", code=535))
        return AuthResult(success=False, handled=False)  # handled=False: aiosmtpd replies 535


class FaultSmtpServer:
    """The SMTP server tests talk to, on `port`; `faults` says what goes wrong."""

    def __init__(self, port: int | None = None, faults: Faults | None = None):
        self.port = port or free_port()
        self.faults = faults or Faults()
        self.lock = threading.RLock()
        self.received: list[bytes] = []
        self.events: list[Event] = []
        self.stalled: set[str] = set()
        self.greetings = 0
        self.on_accept: Callable[[str], None] | None = None  # called with each stored Message-ID
        self.controller = Controller(
            FaultHandler(self),
            hostname="127.0.0.1",
            port=free_port(),
            authenticator=Authenticator(self),
            auth_require_tls=False,
            auth_required=False,
        )
        self.proxy = DataCuttingProxy(self)

    # Life cycle --------------------------------------------------------------------------------
    def start(self) -> None:
        if self.controller._thread is None:
            self.controller.start()
        self.proxy.start()

    def stop(self) -> int:
        """Close the public port and cut every open connection, as a crash would.

        Clients then get refused. Returns how many connections were cut: a message whose final
        dot was in and whose 250 was not yet out on one of them is stored but looks failed to its
        sender (RFC 1047).
        """
        return self.proxy.stop()

    def shutdown(self) -> None:
        self.proxy.stop()
        self.proxy.close()
        self.controller.stop()

    @property
    def running(self) -> bool:
        return self.proxy.listening

    def reset(self, faults: Faults | None = None) -> None:
        with self.lock:
            self.faults = faults or Faults()
            self.received.clear()
            self.events.clear()
            self.stalled.clear()
            self.greetings = 0
            self.on_accept = None

    def configure(self, **changes) -> None:
        with self.lock:
            for name, value in changes.items():
                if not hasattr(self.faults, name):
                    raise AttributeError(f"no such fault: {name}")
                setattr(self.faults, name, value)
            if "seed" in changes:
                self.faults.random = random.Random(changes["seed"])

    def record(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    # What tests count ----------------------------------------------------------------------------
    def copies(self) -> Counter:
        """Stored copies per Message-ID: 1 is delivered, more are duplicates."""
        with self.lock:
            return Counter(message_id_of(content) for content in self.received)

    def count(self) -> int:
        with self.lock:
            return len(self.received)

    def tally(self, kind: str) -> Counter:
        """Events of one kind per Message-ID (or per code for those without one)."""
        with self.lock:
            return Counter(e.message_id or e.code for e in self.events if e.kind == kind)

    def events_of(self, kind: str) -> list[Event]:
        with self.lock:
            return [e for e in self.events if e.kind == kind]

    def messages(self):
        parser = email.parser.BytesParser(policy=email.policy.default)
        with self.lock:
            return [parser.parsebytes(c.replace(b"\r\n", b"\n")) for c in self.received]


class DataCuttingProxy:
    """A TCP proxy in front of the aiosmtpd port that can cut a connection mid-DATA."""

    def __init__(self, owner: FaultSmtpServer):
        self.owner = owner
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[asyncio.StreamWriter] = set()
        self.accepted = 0

    @property
    def listening(self) -> bool:
        return self.server is not None

    def _run(self, coroutine, timeout: float = 10):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def start(self) -> None:
        if self.server is None:
            self.server = self._run(self._listen())

    async def _listen(self) -> asyncio.AbstractServer:
        return await asyncio.start_server(
            self._connection, "127.0.0.1", self.owner.port, reuse_address=True
        )

    def stop(self) -> int:
        if self.server is None:
            return 0
        cut = self._run(self._close())
        self.server = None
        return cut

    async def _close(self) -> int:
        self.server.close()
        clients = [
            w for w in self.connections if w.get_extra_info("sockname")[1] == self.owner.port
        ]
        for writer in list(self.connections):
            writer.transport.abort()
        await self.server.wait_closed()
        return len(clients)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _connection(self, client_reader, client_writer) -> None:
        self.accepted += 1
        try:
            backend_reader, backend_writer = await asyncio.open_connection(
                "127.0.0.1", self.owner.controller.port
            )
        except OSError:
            client_writer.transport.abort()
            return
        pair = (client_writer, backend_writer)
        self.connections.update(pair)
        try:
            await asyncio.gather(
                self._upstream(client_reader, backend_writer, pair),
                self._pump(backend_reader, client_writer),
                return_exceptions=True,
            )
        finally:
            for writer in pair:
                writer.transport.abort()
                self.connections.discard(writer)

    @staticmethod
    async def _pump(reader, writer) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        writer.transport.abort()

    def _take_cut(self) -> int | None:
        with self.owner.lock:
            faults = self.owner.faults
            if faults.drop_first > 0:
                faults.drop_first -= 1
                return faults.drop_after_bytes
            if faults.drop_rate and faults.random.random() < faults.drop_rate:
                return faults.drop_after_bytes
        return None

    async def _upstream(self, reader, writer, pair) -> None:
        """Client to server, line by line in commands; counting bytes inside DATA."""
        pending, in_data, sent, cut_at, tail = b"", False, 0, None, b""
        while chunk := await reader.read(65536):
            pending += chunk
            while pending:
                if not in_data:
                    line, crlf, rest = pending.partition(b"\r\n")
                    if not crlf:
                        break
                    writer.write(line + crlf)
                    pending = rest
                    if line.strip().upper() == b"DATA":
                        in_data, sent, cut_at, tail = True, 0, self._take_cut(), b""
                    continue
                window = tail + pending
                end = window.find(TERMINATOR)
                if cut_at is not None and end >= 0:
                    # a message shorter than cut_at is cut before its final dot all the same
                    cut_at = min(cut_at, sent + max(0, end - len(tail)))
                if cut_at is not None and sent + len(pending) >= cut_at:
                    writer.write(pending[: cut_at - sent])
                    await writer.drain()
                    self.owner.record(Event("dropped"))
                    for each in pair:
                        each.transport.abort()
                    return
                if end < 0:
                    writer.write(pending)
                    sent += len(pending)
                    tail, pending = window[-4:], b""
                    break
                upto = end + len(TERMINATOR) - len(tail)
                writer.write(pending[:upto])
                pending, in_data = pending[upto:], False
            await writer.drain()
        writer.transport.abort()
