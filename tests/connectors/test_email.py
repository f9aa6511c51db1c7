"""The ``email`` connector against a real SMTP server (aiosmtpd on 127.0.0.1).

The server records each accepted message with its envelope, whether the session was encrypted
and who authenticated; it can require STARTTLS and AUTH, and can be told to answer chosen
recipients, the sender or the DATA command with a given reply (451, 550, ...). TLS uses a CA and
a server certificate made for each test run with the ``cryptography`` package.
"""

from __future__ import annotations

import email
import email.policy
import ipaddress
import socket
import ssl
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from factorflow.connectors.email import message_id
from factorflow.connectors.registry import build_connectors
from factorflow.domain.actions import ActionRequest, Enrichment, OutcomeStatus
from factorflow.errors import ConfigError, PermanentActionError, TransientActionError
from factorflow.rules import evaluate, parse_rules
from tests.conftest import WATCHED_SECRETS
from tests.connectors.fakes import FACT, unused_port

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
USERNAME = "factorflow-relay"
PASSWORD = "s3cret-smtp-password-7f3a"
SENDER = "factorflow@example.org"
WATCHED_SECRETS.add(PASSWORD)  # never in a log line

RULES = """
version: 1
match: all
rules:
  - id: tell-security
    when: {kind: [enrollment]}
    actions:
      - id: mail
        kind: email
        params:
          to: ["Security Team <security@example.org>", "helpdesk@example.org"]
          subject: "New {{ fact.factor.type }} factor for {{ fact.user.login }}"
          text: |
            {{ fact.user.display_name }} ({{ fact.user.login }}) enrolled {{ fact.factor.type }}.
            Event {{ fact.uuid }}
          html: "<p><b>{{ fact.user.login }}</b> enrolled {{ fact.factor.type }}.</p>"
"""


def request_for_rule() -> ActionRequest:
    """The action the real rules engine makes of RULES for FACT (templates rendered)."""
    decision = evaluate(
        parse_rules(textwrap.dedent(RULES), source="rules.yaml"), FACT,
        Enrichment(source="none", found=False),
    )
    (request,) = decision.actions
    return request


def plain_request(**params: Any) -> ActionRequest:
    return ActionRequest("r1", "mail", "email", params, "ff-0123456789abcdef0123456789abcdef")


# -- TLS material ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    ca_file: Path
    server: ssl.SSLContext


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A CA, and a certificate it signed for localhost / 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("factorflow test CA")).issuer_name(_name("factorflow test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file, key_file = folder / "server.pem", folder / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    return Tls(ca_file, server)


# -- the SMTP server ---------------------------------------------------------------------------


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    encrypted: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class Mailbox:
    """aiosmtpd handler: records accepted messages; answers as told."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.rcpt_answers: dict[str, str] = {}
        self.mail_answer: str | None = None
        self.data_answer: str | None = None
        self.lock = threading.Lock()

    async def handle_MAIL(self, server: Any, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        if self.mail_answer:
            return self.mail_answer
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        answer = self.rcpt_answers.get(address)
        if answer:
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.data_answer:
            return self.data_answer
        assert isinstance(envelope.content, bytes)
        login = session.auth_data.login.decode() if isinstance(
            session.auth_data, LoginPassword) else None
        with self.lock:
            self.received.append(Received(
                str(envelope.mail_from), list(envelope.rcpt_tos), envelope.content,
                session.ssl is not None, login))
            number = len(self.received)
        return f"250 2.0.0 Ok: queued as Q{number:04d}"


def check_login(server: Any, session: Session, envelope: Envelope, mechanism: str,
                auth_data: Any) -> AuthResult:
    ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USERNAME.encode()
          and auth_data.password == PASSWORD.encode())
    # handled=False: the server sends the standard reply (235, or 535 5.7.8)
    return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)


@dataclass
class Smtp:
    mailbox: Mailbox
    port: int


class Servers:
    """Starts aiosmtpd controllers for a test and stops them afterwards."""

    def __init__(self) -> None:
        self.controllers: list[Controller] = []

    def start(self, **options: Any) -> Smtp:
        mailbox = Mailbox()
        port = unused_port()
        controller = Controller(mailbox, hostname="127.0.0.1", port=port,
                                server_hostname="mx.example.test", **options)
        controller.start()
        self.controllers.append(controller)
        return Smtp(mailbox, port)

    def stop(self) -> None:
        for controller in self.controllers:
            controller.stop()


@pytest.fixture
def servers() -> Iterator[Servers]:
    started = Servers()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def plain(servers: Servers) -> Smtp:
    """A relay without encryption or AUTH (as on an internal network)."""
    return servers.start()


@pytest.fixture
def submission(servers: Servers, tls: Tls) -> Smtp:
    """A submission server: STARTTLS required, then AUTH required."""
    return servers.start(tls_context=tls.server, require_starttls=True,
                         authenticator=check_login, auth_required=True)


def connector(http: httpx.Client, **settings: Any) -> Any:
    settings = {"host": "127.0.0.1", "from_address": f"factorflow <{SENDER}>",
                "local_hostname": "factorflow.example.test", **settings}
    (handler,) = build_connectors({"email": settings}, http, clock=lambda: NOW)
    return handler


def over_tls(smtp: Smtp, tls: Tls, **settings: Any) -> dict[str, Any]:
    return {"port": smtp.port, "security": "starttls", "ca_file": str(tls.ca_file),
            "username": USERNAME, "password": PASSWORD, **settings}


# -- what the server receives ------------------------------------------------------------------


def test_starttls_and_auth_deliver_a_multipart_message_with_the_rendered_params(
    submission: Smtp, tls: Tls, http: httpx.Client
) -> None:
    request = request_for_rule()
    handler = connector(http, **over_tls(submission, tls))

    outcome = handler.perform(request, FACT)

    assert outcome.status is OutcomeStatus.DONE
    assert outcome.reference == f"<{request.idempotency_key}@factorflow>"
    (got,) = submission.mailbox.received
    assert got.encrypted and got.login == USERNAME
    assert got.mail_from == SENDER
    assert got.rcpt_tos == ["security@example.org", "helpdesk@example.org"]
    message = got.message
    assert message["Subject"] == "New email factor for aps@google.com"
    assert message["From"] == f"factorflow <{SENDER}>"
    assert message["To"] == "Security Team <security@example.org>, helpdesk@example.org"
    assert message["Message-ID"] == f"<{request.idempotency_key}@factorflow>"
    assert message["Date"].datetime == NOW
    assert b"\r\nDate: Wed, 01 May 2024 12:00:00 +0000\r\n" in got.data
    assert message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    text, html = list(message.iter_parts())
    assert text.get_content_type() == "text/plain"
    assert text.get_content().replace("\r\n", "\n") == (
        f"aps (aps@google.com) enrolled email.\nEvent {FACT.uuid}\n")
    assert html.get_content_type() == "text/html"
    assert html.get_content().strip() == "<p><b>aps@google.com</b> enrolled email.</p>"


def test_implicit_tls_delivers(servers: Servers, tls: Tls, http: httpx.Client) -> None:
    smtps = servers.start(ssl_context=tls.server)
    handler = connector(http, port=smtps.port, security="tls", ca_file=str(tls.ca_file),
                        to="security@example.org")

    outcome = handler.perform(plain_request(subject="Hello", text="Body"), FACT)

    assert outcome.status is OutcomeStatus.DONE
    (got,) = smtps.mailbox.received
    assert got.rcpt_tos == ["security@example.org"]
    assert got.message["Subject"] == "Hello"


def test_without_params_the_defaults_come_from_the_settings_and_the_fact(
    plain: Smtp, http: httpx.Client
) -> None:
    handler = connector(http, port=plain.port, security="none",
                        to=["soc@example.org", "Audit <audit@example.org>"])

    handler.perform(plain_request(to="  ", subject="", text=" "), FACT)  # blank: defaults

    (got,) = plain.mailbox.received
    assert not got.encrypted and got.login is None
    assert got.rcpt_tos == ["soc@example.org", "audit@example.org"]
    message = got.message
    assert message["Subject"] == "MFA factor enrolled: aps@google.com (email)"
    assert message.get_content_type() == "text/plain"  # no html param: one part
    body = message.get_content()
    assert "User: aps@google.com" in body
    assert "Factor: email (sms_voice_email)" in body
    assert "Enrolled by: self (aps@google.com)" in body
    assert "From: 1.1.1.1 (India)" in body
    assert f"Okta event: {FACT.uuid}" in body


def test_a_template_cannot_inject_headers_through_the_subject(
    plain: Smtp, http: httpx.Client
) -> None:
    handler = connector(http, port=plain.port, security="none")

    handler.perform(plain_request(
        to="soc@example.org", subject="Hi\r\nBcc: attacker@example.net", text="x"), FACT)

    (got,) = plain.mailbox.received
    assert got.rcpt_tos == ["soc@example.org"]
    assert got.message["Subject"] == "Hi Bcc: attacker@example.net"
    assert got.message["Bcc"] is None


# -- the same step twice -----------------------------------------------------------------------


def test_a_repeat_after_a_crash_carries_the_same_message_id(
    submission: Smtp, tls: Tls, http: httpx.Client
) -> None:
    """SMTP cannot be asked whether a message went out: skipping a step already recorded as done
    is the pipeline's job. A crash between the send and that record sends again; the repeat has
    the same Message-ID, so it can be recognised as a duplicate."""
    request = request_for_rule()

    first = connector(http, **over_tls(submission, tls)).perform(request, FACT)
    second = connector(http, **over_tls(submission, tls)).perform(request, FACT)  # new handler

    assert first.reference == second.reference == message_id(request.idempotency_key)
    ids = [got.message["Message-ID"] for got in submission.mailbox.received]
    assert ids == [f"<{request.idempotency_key}@factorflow>"] * 2


def test_different_steps_get_different_message_ids(plain: Smtp, http: httpx.Client) -> None:
    handler = connector(http, port=plain.port, security="none", to="soc@example.org")
    one = plain_request()
    other = ActionRequest("r1", "mail-2", "email", {}, "ff-fedcba9876543210fedcba9876543210")

    handler.perform(one, FACT)
    handler.perform(other, FACT)

    assert [got.message["Message-ID"] for got in plain.mailbox.received] == [
        "<ff-0123456789abcdef0123456789abcdef@factorflow>",
        "<ff-fedcba9876543210fedcba9876543210@factorflow>",
    ]


# -- failures ----------------------------------------------------------------------------------


def test_wrong_password_is_permanent_535_and_the_password_is_not_shown(
    submission: Smtp, tls: Tls, http: httpx.Client
) -> None:
    wrong = "not-the-password-41c9"
    handler = connector(http, **over_tls(submission, tls, password=wrong))

    with pytest.raises(PermanentActionError) as caught:
        handler.perform(request_for_rule(), FACT)

    message = str(caught.value)
    assert "535" in message and "SMTPAuthenticationError" in message
    assert wrong not in message and PASSWORD not in message
    assert submission.mailbox.received == []


def test_a_server_that_requires_auth_refuses_an_anonymous_sender_permanently(
    submission: Smtp, tls: Tls, http: httpx.Client
) -> None:
    settings = over_tls(submission, tls)
    del settings["username"], settings["password"]
    handler = connector(http, **settings)

    with pytest.raises(PermanentActionError) as caught:
        handler.perform(request_for_rule(), FACT)

    assert "530" in str(caught.value)
    assert submission.mailbox.received == []


def test_a_certificate_from_an_untrusted_ca_is_permanent(
    submission: Smtp, tls: Tls, http: httpx.Client
) -> None:
    settings = over_tls(submission, tls)
    del settings["ca_file"]  # the system's CAs do not know the test CA
    handler = connector(http, **settings)

    with pytest.raises(PermanentActionError) as caught:
        handler.perform(request_for_rule(), FACT)

    assert "certificate does not verify" in str(caught.value)
    assert submission.mailbox.received == []


def test_a_server_without_starttls_is_permanent_never_a_plain_fallback(
    plain: Smtp, tls: Tls, http: httpx.Client
) -> None:
    handler = connector(http, port=plain.port, security="starttls", ca_file=str(tls.ca_file),
                        to="soc@example.org")

    with pytest.raises(PermanentActionError) as caught:
        handler.perform(plain_request(), FACT)

    assert "STARTTLS" in str(caught.value)
    assert plain.mailbox.received == []


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        ("550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown",
         PermanentActionError),
        ("553 5.1.3 Invalid recipient address syntax", PermanentActionError),
        ("451 4.3.0 Temporary lookup failure", TransientActionError),
        ("452 4.2.2 Mailbox full", TransientActionError),
    ],
)
def test_a_refused_recipient_is_classified_by_its_reply_code(
    plain: Smtp, http: httpx.Client, answer: str, error: type[Exception]
) -> None:
    plain.mailbox.rcpt_answers["nobody@example.org"] = answer
    handler = connector(http, port=plain.port, security="none")

    with pytest.raises(error) as caught:
        handler.perform(plain_request(to="nobody@example.org"), FACT)

    code = answer.split()[0]
    assert f"nobody@example.org ({code}" in str(caught.value)
    assert plain.mailbox.received == []


def test_a_partly_refused_message_names_what_was_accepted(
    plain: Smtp, http: httpx.Client
) -> None:
    plain.mailbox.rcpt_answers["away@example.org"] = "451 4.2.0 Try again later"
    handler = connector(http, port=plain.port, security="none")

    with pytest.raises(TransientActionError) as caught:
        handler.perform(plain_request(to=["soc@example.org", "away@example.org"]), FACT)

    assert "away@example.org (451" in str(caught.value)
    assert "accepted for 1 other recipient" in str(caught.value)
    (got,) = plain.mailbox.received
    assert got.rcpt_tos == ["soc@example.org"]


def test_a_partly_refused_message_with_a_5xx_is_permanent(
    plain: Smtp, http: httpx.Client
) -> None:
    plain.mailbox.rcpt_answers["gone@example.org"] = "550 5.1.1 User unknown"
    plain.mailbox.rcpt_answers["away@example.org"] = "451 4.2.0 Try again later"
    handler = connector(http, port=plain.port, security="none")

    with pytest.raises(PermanentActionError) as caught:
        handler.perform(plain_request(
            to="soc@example.org, gone@example.org, away@example.org"), FACT)

    assert "gone@example.org (550" in str(caught.value)
    assert [got.rcpt_tos for got in plain.mailbox.received] == [["soc@example.org"]]


@pytest.mark.parametrize(
    ("where", "answer", "error"),
    [
        ("mail", "553 5.7.1 Sender address rejected: not owned by user", PermanentActionError),
        ("mail", "421 4.7.0 Try again later, closing connection", TransientActionError),
        ("data", "554 5.7.1 Message rejected as spam", PermanentActionError),
        ("data", "452 4.3.1 Insufficient system storage", TransientActionError),
    ],
)
def test_sender_and_data_replies_are_classified_by_code(
    plain: Smtp, http: httpx.Client, where: str, answer: str, error: type[Exception]
) -> None:
    setattr(plain.mailbox, f"{where}_answer", answer)
    handler = connector(http, port=plain.port, security="none", to="soc@example.org")

    with pytest.raises(error) as caught:
        handler.perform(plain_request(), FACT)

    assert answer.split()[0] in str(caught.value)
    assert plain.mailbox.received == []


class RawServer:
    """A TCP server on 127.0.0.1 that does one scripted thing per connection."""

    def __init__(self, behaviour: str) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.behaviour = behaviour
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            if self.behaviour == "busy":
                conn.sendall(b"421 4.3.2 mx.example.test Service not available\r\n")
            elif self.behaviour == "hang-up":
                pass  # close without a greeting
            elif self.behaviour == "silent":
                self.done.wait(10)

    def close(self) -> None:
        self.done.set()
        self.sock.close()
        self.thread.join(5)


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [
        ("busy", "421"),
        ("hang-up", "Connection unexpectedly closed"),
        ("silent", "timed out"),
    ],
)
def test_connection_trouble_is_transient(
    http: httpx.Client, behaviour: str, expected: str
) -> None:
    server = RawServer(behaviour)
    try:
        handler = connector(http, port=server.port, security="none", to="soc@example.org",
                            timeout_seconds=0.3)
        with pytest.raises(TransientActionError) as caught:
            handler.perform(plain_request(), FACT)
    finally:
        server.close()

    assert expected in str(caught.value)


def test_nobody_listening_is_transient(http: httpx.Client) -> None:
    handler = connector(http, port=unused_port(), security="none", to="soc@example.org")

    with pytest.raises(TransientActionError) as caught:
        handler.perform(plain_request(), FACT)

    assert "ConnectionRefusedError" in str(caught.value)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, "params.to is required (no default 'to' is configured)"),
        ({"to": "not-an-address"}, "params.to: 'not-an-address' is not an email address"),
        ({"to": "a@example.org\r\nBcc: b@example.org"}, "must not contain a line break"),
        ({"to": 42}, "params.to must be text or a list"),
        ({"to": "a@example.org", "subject": ["x"]}, "params.subject must be text"),
    ],
)
def test_bad_params_are_permanent_and_nothing_is_sent(
    plain: Smtp, http: httpx.Client, params: dict[str, Any], expected: str
) -> None:
    handler = connector(http, port=plain.port, security="none")

    with pytest.raises(PermanentActionError) as caught:
        handler.perform(plain_request(**params), FACT)

    assert expected in str(caught.value)
    assert plain.mailbox.received == []


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"host": None}, "connectors.email.host: Input should be a valid string"),
        ({"security": "ssl"},
         "connectors.email.security: Input should be 'starttls', 'tls' or 'none'"),
        ({"port": 70000}, "connectors.email.port: Input should be less than or equal to 65535"),
        ({"from_address": "factorflow"}, "connectors.email.from_address: Value error, "
                                         "'factorflow' is not an email address"),
        ({"to": ["ok@example.org", "nope"]}, "connectors.email.to: Value error, 'nope'"),
        ({"username": USERNAME}, "connectors.email.password: required when username is set"),
        ({"password": PASSWORD}, "connectors.email.username: required when a password is set"),
        ({"username": USERNAME, "password": PASSWORD, "security": "none"},
         "connectors.email.security: 'none' would send the password unencrypted"),
        ({"ca_file": "missing-ca.pem"}, "connectors.email.ca_file: cannot load missing-ca.pem"),
        ({"pasword": PASSWORD}, "connectors.email.pasword: Extra inputs are not permitted"),
    ],
)
def test_invalid_settings_name_the_key_and_never_the_password(
    http: httpx.Client, settings: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        connector(http, **settings)

    assert expected in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_password_and_password_file_together_are_refused(
    http: httpx.Client, tmp_path: Path
) -> None:
    (tmp_path / "password").write_text(PASSWORD)

    with pytest.raises(ConfigError) as caught:
        connector(http, username=USERNAME, password=PASSWORD,
                  password_file=str(tmp_path / "password"))

    assert "connectors.email.password: password and password_file are both set" in str(
        caught.value)
    assert PASSWORD not in str(caught.value)


def test_the_password_can_come_from_a_file(
    submission: Smtp, tls: Tls, http: httpx.Client, tmp_path: Path
) -> None:
    (tmp_path / "password").write_text(PASSWORD + "\n")
    settings = over_tls(submission, tls, password_file=str(tmp_path / "password"))
    del settings["password"]

    connector(http, **settings).perform(request_for_rule(), FACT)

    assert [got.login for got in submission.mailbox.received] == [USERNAME]
