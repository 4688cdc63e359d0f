"""SMTP PIPELINING (RFC 2920): MAIL, RCPT and DATA go out in one write when the server offers it,
and every refusal is handled as it is one command at a time."""

import re
import smtplib
import socket
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from notifications.conf import SmtpSettings
from notifications.exceptions import PermanentSendError, TransientSendError
from notifications.smtp import SmtpClient, _quoted
from tests.support.processes import free_port
from tests.support.smtp_sink import SmtpSink

MESSAGE = b"Subject: dots\r\n\r\n.a line that starts with a dot\r\n..and two\r\nend\r\n"


def settings_for(port: int, timeout: float = 5.0) -> SmtpSettings:
    return SmtpSettings("127.0.0.1", port, False, False, timeout, "from@example.org")


class StrictPipeliningServer:
    """Answers nothing of MAIL, RCPT and DATA until all three have arrived: a client that waits
    for MAIL's reply before sending RCPT waits until it times out."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.content = b""
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(10)
        connection, _ = self.listener.accept()
        with connection, self.listener:
            connection.settimeout(10)
            reader = connection.makefile("rb")
            connection.sendall(b"220 strict ESMTP\r\n")
            reader.readline()  # EHLO
            connection.sendall(b"250-strict\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n")
            envelope = [reader.readline() for _ in range(3)]  # MAIL, RCPT, DATA: no reply yet
            assert [line[:4].upper() for line in envelope] == [b"MAIL", b"RCPT", b"DATA"]
            connection.sendall(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with .\r\n")
            while not self.content.endswith(b"\r\n.\r\n"):
                self.content += reader.readline()
            connection.sendall(b"250 2.0.0 Ok: queued as STRICT1\r\n")
            if reader.readline().upper().startswith(b"QUIT"):
                connection.sendall(b"221 Bye\r\n")


def test_envelope_commands_go_out_together_when_the_server_offers_pipelining():
    server = StrictPipeliningServer()
    client = SmtpClient()
    result = client.send(
        settings=settings_for(server.port, timeout=3.0),
        envelope_from="from@example.org",
        recipients=["to@example.org"],
        message=MESSAGE,
    )
    client.close()
    server.thread.join(5)
    assert result.response == "250 2.0.0 Ok: queued as STRICT1"
    # Dot-stuffed as DATA carries it, then the end marker.
    assert server.content == MESSAGE.replace(b"\r\n.", b"\r\n..") + b".\r\n"


@pytest.fixture(params=[True, False], ids=["pipelined", "one-at-a-time"])
def sink(request):
    server = SmtpSink(free_port())
    server.start()
    server.handler.pipelining = request.param
    yield server
    server.stop()


def send(client: SmtpClient, port: int, recipients: list[str], sender: str = "from@example.org"):
    return client.send(
        settings=settings_for(port), envelope_from=sender, recipients=recipients, message=MESSAGE
    )


def test_a_message_arrives_intact_with_its_leading_dots(sink):
    client = SmtpClient()
    result = send(client, sink.port, ["to@example.org"])
    client.close()
    assert result.response.startswith("250 ") and result.refused == {}
    (received,) = sink.handler.messages
    assert received.content.replace(b"\r\n", b"\n") == MESSAGE.replace(b"\r\n", b"\n")


def test_one_refused_recipient_is_reported_and_the_others_get_the_message(sink):
    sink.handler.refused["gone@example.org"] = "550 5.1.1 Mailbox gone"
    client = SmtpClient()
    result = send(client, sink.port, ["gone@example.org", "here@example.org"])
    client.close()
    assert result.refused == {"gone@example.org": (550, "5.1.1 Mailbox gone")}
    assert [m.rcpt_tos for m in sink.handler.messages] == [["here@example.org"]]


def test_every_recipient_refused_sends_nothing_and_the_connection_carries_on(sink):
    sink.handler.refused["gone@example.org"] = "550 5.1.1 Mailbox gone"
    client = SmtpClient()
    with pytest.raises(
        PermanentSendError, match=re.escape("all recipients refused: 5.1.1 Mailbox gone")
    ):
        send(client, sink.port, ["gone@example.org"])
    assert send(client, sink.port, ["here@example.org"]).response.startswith("250 ")
    client.close()
    assert [m.rcpt_tos for m in sink.handler.messages] == [["here@example.org"]]
    assert sink.handler.greetings == 1


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        ("553 5.7.1 Sender not allowed", PermanentSendError),
        ("451 4.3.0 Try later", TransientSendError),
    ],
)
def test_a_refused_sender_sends_nothing_and_the_connection_carries_on(sink, reply, kind):
    sink.handler.refused_senders["bad@example.org"] = reply
    client = SmtpClient()
    with pytest.raises(kind, match=re.escape(reply)):
        send(client, sink.port, ["to@example.org"], sender="bad@example.org")
    assert send(client, sink.port, ["to@example.org"]).response.startswith("250 ")
    client.close()
    assert [m.mail_from for m in sink.handler.messages] == ["from@example.org"]
    assert sink.handler.greetings == 1


def test_a_message_refused_at_the_end_of_data_is_a_permanent_failure(sink):
    sink.handler.data_replies.append("554 5.6.0 Message refused")
    client = SmtpClient()
    with pytest.raises(PermanentSendError, match=re.escape("554 5.6.0 Message refused")):
        send(client, sink.port, ["to@example.org"])
    client.close()
    assert sink.handler.count() == 0


def test_unusual_bare_addresses_reach_the_server_as_given(sink):
    client = SmtpClient()
    sender, recipient = "o'brien+news@example.org", "!#$%&*/=?^_`{|}~-x.y@mail-1.example.org"
    send(client, sink.port, [recipient], sender=sender)
    client.close()
    ((mail_from, rcpt_tos),) = [(m.mail_from, m.rcpt_tos) for m in sink.handler.messages]
    assert (mail_from, rcpt_tos) == (sender, [recipient])


ATEXT = "ABCXYZabcxyz0189.!#$%&'*+/=?^_`{|}~-"


@given(
    st.one_of(
        st.builds(
            "{}@{}".format,
            st.text(ATEXT, min_size=1, max_size=20),
            st.text("abcxyz0189.-", min_size=1, max_size=20),
        ),
        st.text(max_size=30),
    )
)
def test_envelope_addresses_are_quoted_as_smtplib_quotes_them(address):
    """The pipelined envelope's own quoting (skipping smtplib's header parser for bare
    addresses) gives what smtplib.quoteaddr gives."""
    assert _quoted(address) == smtplib.quoteaddr(address)
