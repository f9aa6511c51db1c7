"""The ``email`` connector: one message sent over SMTP (``smtplib`` of the standard library; the
shared HTTP client is not used).

Settings (``[connectors.email]``): ``host``, ``port`` (default by ``security``: 587 for
``starttls``, 465 for ``tls``, 25 for ``none``), ``security`` (``starttls``: plain connection
upgraded with STARTTLS, refused if the server does not offer it; ``tls``: TLS from the first byte;
``none``: no encryption, only without credentials), ``username`` / ``password`` (or
``password_file``) for SMTP AUTH, ``from_address``, ``to`` (default recipients), ``ca_file``
(a PEM bundle to trust instead of the system's CAs), ``local_hostname`` (the EHLO name) and
``timeout_seconds``.

Params: ``to`` (an address, a comma-separated list or a list; default: the configured ``to``),
``subject`` and ``text`` (defaults built from the fact), ``html`` (optional; with it the message
is ``multipart/alternative`` with the text and the HTML part).

Idempotency: SMTP cannot be asked whether a message was sent. The pipeline records a done result
per idempotency key and never repeats it; a repeat can only come from a crash between the end of
DATA and that record, or from a retry after a partial refusal. Every message carries
``Message-ID: <idempotency-key@factorflow>``, so a repeat has the same Message-ID as the first
send and mail systems (and people) can recognise it.

Failures: connection errors, timeouts, a dropped connection and 4xx replies are transient;
5xx replies (550 no such user, 553, 554, 535 authentication failed), a certificate that does not
verify and a missing STARTTLS are permanent. When some recipients are refused and others accepted,
the message has gone to the accepted ones: the error (transient if every refusal is 4xx,
permanent otherwise) names both, and a retry sends the same Message-ID to all of them again.
"""

from __future__ import annotations

import smtplib
import ssl
from collections.abc import Sequence
from email import errors as email_errors
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field, SecretStr, field_validator

from factorflow.actions.base import ActionHandler
from factorflow.connectors.base import (
    Clock,
    ConnectorSettings,
    param,
    secret_value,
    where,
)
from factorflow.connectors.text import (
    actor_label,
    client_label,
    event_time,
    event_title,
    one_line,
    text_param,
    user_label,
)
from factorflow.domain.actions import ActionOutcome, ActionRequest, OutcomeStatus
from factorflow.domain.facts import Fact
from factorflow.errors import (
    ActionError,
    ConfigError,
    PermanentActionError,
    TransientActionError,
)

KIND = "email"
MESSAGE_ID_DOMAIN = "factorflow"
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
_SUBJECT_LIMIT = 250


def parse_addresses(value: str | Sequence[str]) -> list[Address]:
    """Addresses from ``"a@x.org"``, ``"Ann <a@x.org>, b@y.org"`` or a list of those;
    ValueError (naming the bad entry) for anything that is not an address with a domain."""
    items = [value] if isinstance(value, str) else list(value)
    found: list[Address] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError("addresses must be text")
        if "\r" in item or "\n" in item:
            raise ValueError("an address must not contain a line break")
        for name, spec in getaddresses([item]):
            found.append(_address(name, spec, item))
    if not found:
        raise ValueError("no address given")
    return found


def _address(name: str, spec: str, original: str) -> Address:
    try:
        address = Address(display_name=name, addr_spec=spec)
    except (ValueError, IndexError, email_errors.HeaderParseError):
        raise ValueError(f"{original!r} is not an email address") from None
    if not address.username or not address.domain:
        raise ValueError(f"{original!r} is not an email address")
    return address


def message_id(idempotency_key: str) -> str:
    """The Message-ID of every send of one request: the same on each retry and replay."""
    return f"<{idempotency_key}@{MESSAGE_ID_DOMAIN}>"


class EmailSettings(ConnectorSettings):
    host: str = Field(min_length=1, max_length=253)
    port: int | None = Field(None, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = Field(None, min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None
    from_address: str
    to: tuple[str, ...] = ()
    ca_file: Path | None = None
    local_hostname: str | None = Field(None, min_length=1, max_length=253)
    timeout_seconds: float = Field(10.0, gt=0, le=300)

    @field_validator("from_address")
    @classmethod
    def _one_sender(cls, value: str) -> str:
        if len(parse_addresses(value)) != 1:
            raise ValueError("give exactly one sender address")
        return value

    @field_validator("to", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("to")
    @classmethod
    def _addresses(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if value:
            parse_addresses(value)
        return value

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else DEFAULT_PORTS[self.security]


class EmailHandler:
    """``kind: email``: see the module docstring."""

    kind = KIND

    def __init__(self, settings: EmailSettings, clock: Clock) -> None:
        self._settings = settings
        self._clock = clock
        key = "connectors.email.password"
        try:
            self._password = secret_value(settings.password, settings.password_file, "password")
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        if settings.username is not None and self._password is None:
            raise ConfigError(f"{key}: required when username is set")
        if self._password is not None and settings.username is None:
            raise ConfigError("connectors.email.username: required when a password is set")
        if settings.username is not None and settings.security == "none":
            raise ConfigError(
                "connectors.email.security: 'none' would send the password unencrypted; "
                "use starttls or tls"
            )
        self._sender = parse_addresses(settings.from_address)[0]
        self._default_to = parse_addresses(settings.to) if settings.to else []
        self._tls = self._tls_context(settings)
        self._server = f"{settings.host}:{settings.effective_port}"

    @staticmethod
    def _tls_context(settings: EmailSettings) -> ssl.SSLContext | None:
        if settings.security == "none":
            return None
        try:
            return ssl.create_default_context(
                cafile=str(settings.ca_file) if settings.ca_file else None
            )
        except (OSError, ssl.SSLError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise ConfigError(
                f"connectors.email.ca_file: cannot load {settings.ca_file}: {reason}"
            ) from None

    def perform(self, request: ActionRequest, fact: Fact) -> ActionOutcome:
        message, recipients = self.compose(request, fact)
        refused = self._send(request, message, [a.addr_spec for a in recipients])
        if refused:  # the others accepted it
            raise _refused(f"{where(request)}: SMTP {self._server}", refused,
                           accepted=len(recipients) - len(refused))
        return ActionOutcome(
            OutcomeStatus.DONE,
            f"sent to {len(recipients)} recipient(s) via {self._server}",
            reference=message_id(request.idempotency_key),
        )

    def compose(self, request: ActionRequest, fact: Fact) -> tuple[EmailMessage, list[Address]]:
        """The message for ``request`` and its recipients (PermanentActionError for bad
        params)."""
        recipients = self._recipients(request)
        # One line: a template cannot add a header through the subject.
        subject = one_line(text_param(request, "subject", default_subject(fact), numbers=False),
                           _SUBJECT_LIMIT)
        text = text_param(request, "text", default_text(fact), numbers=False)
        html = text_param(request, "html", "", numbers=False)
        message = EmailMessage()
        message["Subject"] = subject
        message["From"] = self._sender
        message["To"] = recipients
        message["Date"] = self._clock()  # formatted as RFC 5322 wants
        message["Message-ID"] = message_id(request.idempotency_key)
        message["Auto-Submitted"] = "auto-generated"
        message.set_content(text)
        if html.strip():
            message.add_alternative(html, subtype="html")
        return message, recipients

    def _recipients(self, request: ActionRequest) -> list[Address]:
        value = param(request, "to")
        if isinstance(value, str):
            value = value.strip()
        if value is None or (isinstance(value, str | list | tuple) and not value):
            if not self._default_to:
                raise PermanentActionError(
                    f"{where(request)}: params.to is required (no default 'to' is configured)"
                )
            return list(self._default_to)
        if not isinstance(value, str | list | tuple):
            raise PermanentActionError(f"{where(request)}: params.to must be text or a list")
        try:
            return parse_addresses(value)
        except ValueError as exc:
            raise PermanentActionError(f"{where(request)}: params.to: {exc}") from None

    def _send(
        self, request: ActionRequest, message: EmailMessage, recipients: list[str]
    ) -> dict[str, tuple[int, bytes]]:
        """One SMTP session; the recipients the server refused while accepting others."""
        settings = self._settings
        label = f"{where(request)}: SMTP {self._server}"
        smtp: smtplib.SMTP | None = None
        try:
            if settings.security == "tls":
                smtp = smtplib.SMTP_SSL(
                    settings.host, settings.effective_port, settings.local_hostname,
                    timeout=settings.timeout_seconds, context=self._tls,
                )
            else:
                smtp = smtplib.SMTP(
                    settings.host, settings.effective_port, settings.local_hostname,
                    timeout=settings.timeout_seconds,
                )
                if settings.security == "starttls":
                    smtp.starttls(context=self._tls)
            if settings.username is not None and self._password is not None:
                smtp.login(settings.username, self._password)
            refused = smtp.send_message(
                message, from_addr=self._sender.addr_spec, to_addrs=recipients
            )
        except Exception as exc:
            if smtp is not None:
                smtp.close()
            error = classify(exc, label)
            if error is None:
                raise
            raise error from None
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()  # the message was accepted; a failed QUIT changes nothing
        return dict(refused)


def classify(exc: BaseException, label: str) -> ActionError | None:
    """The action error for an exception of an SMTP session (None: not an SMTP failure)."""
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return _refused(label, exc.recipients, accepted=0)
    if isinstance(exc, smtplib.SMTPResponseException):
        return _by_code(f"{label}: {type(exc).__name__}", exc.smtp_code, exc.smtp_error)
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TransientActionError(f"{label}: {_excerpt(str(exc)) or 'disconnected'}")
    if isinstance(exc, smtplib.SMTPException):  # e.g. STARTTLS or AUTH not offered
        return PermanentActionError(f"{label}: {_excerpt(str(exc))}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentActionError(
            f"{label}: the server certificate does not verify ({exc.verify_message})"
        )
    if isinstance(exc, TimeoutError):
        return TransientActionError(f"{label}: timed out")
    if isinstance(exc, OSError):  # refused, reset, DNS failure, TLS handshake failure
        return TransientActionError(f"{label}: {type(exc).__name__}")
    return None


def _by_code(label: str, code: int, reply: bytes | str) -> ActionError:
    message = f"{label}: {code} {_excerpt(reply)}"
    if 500 <= code <= 599:
        return PermanentActionError(message)
    return TransientActionError(message)  # 4xx, or no reply code (-1)


def _refused(
    label: str, refused: dict[str, tuple[int, bytes]], *, accepted: int
) -> ActionError:
    parts = [f"{rcpt} ({code} {_excerpt(reply)})" for rcpt, (code, reply) in refused.items()]
    message = f"{label}: recipients refused: {'; '.join(parts)}"
    if accepted:
        message += f" (accepted for {accepted} other recipient(s))"
    if all(400 <= code <= 499 for code, _ in refused.values()):
        return TransientActionError(message)
    return PermanentActionError(message)


def _excerpt(reply: bytes | str, limit: int = 200) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return " ".join(text[:limit].split())


def default_subject(fact: Fact) -> str:
    return f"{event_title(fact)}: {user_label(fact)} ({fact.factor.type})"


def default_text(fact: Fact) -> str:
    """The plain-text body used when the rule gives no ``text``."""
    actor = actor_label(fact)
    lines = [
        f"Event: {fact.event_type}",
        f"User: {user_label(fact)}",
        f"Factor: {fact.factor.type} ({fact.factor.strength.value})",
        f"Enrolled by: {fact.enrolled_by.value}" + (f" ({actor})" if actor else ""),
        f"Time: {event_time(fact)}",
    ]
    if fact.client.ip:
        lines.append(f"From: {client_label(fact)}")
    lines.append(f"Okta event: {fact.uuid}")
    return "\n".join(lines) + "\n"


class EmailFactory:
    kind = KIND
    settings_model = EmailSettings

    def create(self, settings: Any, http: httpx.Client, clock: Clock) -> ActionHandler:
        return EmailHandler(settings, clock)


FACTORY = EmailFactory()
