"""E-mail transports, swappable behind one resource type.

`FileOutboxTransport` (embedded default) writes each message to `<directory>/<message-id>.eml`;
`SmtpTransport` hands it to an SMTP server (`RUNHUB_SMTP_URL`, CONTRACT §1). Both raise
`EmailDeliveryError` with a one-line reason and never let a socket or SMTP exception reach the
user. For batches, `session()` keeps one SMTP connection open for many messages.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import smtplib
import socket
import ssl
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.utils import getaddresses
from io import BytesIO
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import dagster as dg

from runhub_pipeline.settings import SettingsError

DEFAULT_SMTP_TIMEOUT_SECONDS = 10.0
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._@+=-]")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class EmailDeliveryError(RuntimeError):
    """A message was not handed over; the message is one line for the user."""


class EmailSender(Protocol):
    def send(self, message: EmailMessage) -> None: ...


def message_bytes(message: EmailMessage) -> bytes:
    """The message as sent: CRLF line ends, no `From ` mangling."""
    buffer = BytesIO()
    generator = BytesGenerator(
        buffer, mangle_from_=False, policy=message.policy.clone(linesep="\r\n")
    )
    generator.flatten(message)
    return buffer.getvalue()


class EmailTransport(dg.ConfigurableResource, ABC):
    """Where outgoing e-mail goes. `send` raises EmailDeliveryError on failure."""

    @abstractmethod
    def send(self, message: EmailMessage) -> None:
        """Deliver one message (its Message-ID makes a repeat recognizable)."""

    @abstractmethod
    def describe(self) -> str:
        """Where mail goes, for logs and the CLI; never contains credentials."""

    @contextmanager
    def session(self) -> Iterator[EmailSender]:
        """A sender for many messages in a row; each `send` still fails on its own.

        The default sends one by one; SMTP overrides it to reuse one connection.
        """
        yield self


class FileOutboxTransport(EmailTransport):
    """Writes `<directory>/<message-id>.eml`; the same Message-ID overwrites the same file."""

    directory: str

    def path_for(self, message_id: str) -> Path:
        raw = message_id.strip().strip("<>")
        name = _SAFE_NAME.sub("_", raw).lstrip(".")[:150]
        if name != raw:
            # Two ids that differ only in replaced characters must not share a file.
            name = f"{name}-{hashlib.sha256(raw.encode('utf-8')).hexdigest()[:12]}"
        return Path(self.directory) / f"{name}.eml"

    def describe(self) -> str:
        return f"file outbox {self.directory}"

    def send(self, message: EmailMessage) -> None:
        message_id = message.get("Message-ID")
        if not message_id or not str(message_id).strip("<> "):
            raise EmailDeliveryError("outbox: the message has no Message-ID")
        target = self.path_for(str(message_id))
        data = message_bytes(message)
        # Written beside the target and renamed over it: a reader (or a crash) never sees half a
        # message, and a retry of the same Message-ID replaces the file instead of adding one.
        temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with temporary.open("wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except OSError as error:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)
            reason = error.strerror or str(error)
            raise EmailDeliveryError(f"outbox {self.directory}: {reason}") from error


@dataclass(frozen=True)
class SmtpEndpoint:
    host: str
    port: int
    username: str | None
    password: str | None = field(repr=False)
    implicit_tls: bool
    starttls: bool

    @property
    def label(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_smtp_url(url: str) -> SmtpEndpoint:
    """`smtp://[user:pass@]host:port[?starttls=true]` or `smtps://…` (implicit TLS).

    User and password may be percent-encoded. The port defaults to 25 (smtp), 587 (smtp with
    STARTTLS) or 465 (smtps). Errors never repeat the URL, which may hold a password.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps"):
        raise SettingsError(
            f"RUNHUB_SMTP_URL must start with smtp:// or smtps://, got {scheme or 'no scheme'}"
        )
    if not parts.hostname:
        raise SettingsError("RUNHUB_SMTP_URL has no host")
    try:
        port = parts.port
    except ValueError:
        raise SettingsError("RUNHUB_SMTP_URL has an invalid port") from None
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"starttls"})
    if unknown:
        raise SettingsError(f"RUNHUB_SMTP_URL has unknown parameters: {', '.join(unknown)}")
    flag = query.get("starttls", ["false"])[-1].strip().lower()
    if flag not in _TRUE | _FALSE:
        raise SettingsError(f"RUNHUB_SMTP_URL: starttls must be true or false, got {flag!r}")
    starttls = flag in _TRUE
    implicit_tls = scheme == "smtps"
    if implicit_tls and starttls:
        raise SettingsError("RUNHUB_SMTP_URL: smtps:// is already encrypted; drop ?starttls=true")
    default_port = 465 if implicit_tls else 587 if starttls else 25
    return SmtpEndpoint(
        host=parts.hostname,
        port=port or default_port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        implicit_tls=implicit_tls,
        starttls=starttls,
    )


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _reply_text(reply: bytes | str) -> str:
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply
    return _one_line(text)


def _reason(error: BaseException, timeout_seconds: float) -> str:
    """A one-line reason for a failed SMTP exchange."""
    if isinstance(error, smtplib.SMTPServerDisconnected) and isinstance(error.__context__, OSError):
        # smtplib reports a read timeout or reset as "Connection unexpectedly closed".
        return _reason(error.__context__, timeout_seconds)
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return f"timed out after {timeout_seconds:g}s"
    if isinstance(error, socket.gaierror):
        return "cannot resolve the host name"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({error.verify_message})"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed ({error.reason or error})"
    if isinstance(error, smtplib.SMTPAuthenticationError):
        return f"authentication failed ({error.smtp_code} {_reply_text(error.smtp_error)})"
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        refusals = [
            f"{rcpt}: {code} {_reply_text(text)}" for rcpt, (code, text) in error.recipients.items()
        ]
        return f"recipient refused ({'; '.join(refusals)})"
    if isinstance(error, smtplib.SMTPSenderRefused):
        return f"sender refused ({error.smtp_code} {_reply_text(error.smtp_error)})"
    if isinstance(error, smtplib.SMTPResponseException):
        return f"server replied {error.smtp_code} {_reply_text(error.smtp_error)}"
    if isinstance(error, smtplib.SMTPServerDisconnected | ConnectionResetError | BrokenPipeError):
        return "the server closed the connection"
    if isinstance(error, smtplib.SMTPNotSupportedError):
        return _one_line(str(error))
    if isinstance(error, OSError):
        return _one_line(error.strerror or str(error))
    return _one_line(str(error)) or type(error).__name__


def _envelope(message: EmailMessage) -> tuple[str, list[str]]:
    senders = getaddresses([str(value) for value in message.get_all("From", [])])
    recipients = [
        address
        for _, address in getaddresses(
            [str(value) for field in ("To", "Cc", "Bcc") for value in message.get_all(field, [])]
        )
        if address
    ]
    if len(senders) != 1 or not senders[0][1]:
        raise EmailDeliveryError("smtp: the message needs exactly one From address")
    if not recipients:
        raise EmailDeliveryError("smtp: the message has no recipient")
    return senders[0][1], recipients


class _DroppedBeforeData(Exception):
    """The server went away before it accepted any of the message."""


class _SmtpSession:
    """One SMTP connection, opened on the first send and reused for the next ones."""

    def __init__(self, endpoint: SmtpEndpoint, timeout_seconds: float, ca_file: str | None):
        self._endpoint = endpoint
        self._timeout = timeout_seconds
        self._ca_file = ca_file
        self._connection: smtplib.SMTP | None = None

    def _fail(self, error: BaseException) -> EmailDeliveryError:
        return EmailDeliveryError(f"smtp {self._endpoint.label}: {_reason(error, self._timeout)}")

    def _tls_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self._ca_file)

    def _connect(self) -> smtplib.SMTP:
        endpoint = self._endpoint
        connection: smtplib.SMTP
        if endpoint.implicit_tls:
            connection = smtplib.SMTP_SSL(
                endpoint.host, endpoint.port, timeout=self._timeout, context=self._tls_context()
            )
        else:
            connection = smtplib.SMTP(endpoint.host, endpoint.port, timeout=self._timeout)
        try:
            connection.ehlo()
            if endpoint.starttls:
                if not connection.has_extn("starttls"):
                    raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS")
                connection.starttls(context=self._tls_context())
                connection.ehlo()
            if endpoint.username is not None:
                connection.login(endpoint.username, endpoint.password or "")
        except BaseException:
            _close(connection)
            raise
        return connection

    def _transmit(
        self, connection: smtplib.SMTP, sender: str, recipients: list[str], data: bytes
    ) -> None:
        try:
            code, reply = connection.mail(sender)
            if code != 250:
                connection.rset()
                raise smtplib.SMTPSenderRefused(code, reply, sender)
            refused = {}
            for recipient in recipients:
                code, reply = connection.rcpt(recipient)
                if code not in (250, 251):
                    refused[recipient] = (code, reply)
            if refused:
                # All or nothing: a partly addressed message would be hard to retry correctly.
                connection.rset()
                raise smtplib.SMTPRecipientsRefused(refused)
        except (smtplib.SMTPServerDisconnected, ConnectionResetError, BrokenPipeError) as error:
            raise _DroppedBeforeData() from error
        except smtplib.SMTPSenderRefused as error:
            if error.smtp_code == 421:  # "service closing": the server is ending this connection
                raise _DroppedBeforeData() from error
            raise
        code, reply = connection.data(data)
        if code != 250:
            raise smtplib.SMTPDataError(code, reply)

    def send(self, message: EmailMessage) -> None:
        sender, recipients = _envelope(message)
        data = message_bytes(message)
        reused = self._connection is not None
        try:
            if self._connection is None:
                self._connection = self._connect()
            try:
                self._transmit(self._connection, sender, recipients, data)
            except _DroppedBeforeData as dropped:
                self.close()
                if not reused:
                    raise dropped.__cause__ or dropped from None
                # An idle or per-connection limit closed a reused connection before the server
                # accepted anything of this message, so a fresh connection cannot duplicate it.
                self._connection = self._connect()
                try:
                    self._transmit(self._connection, sender, recipients, data)
                except _DroppedBeforeData as again:
                    raise again.__cause__ or again from None
        except EmailDeliveryError:
            raise
        except (smtplib.SMTPException, OSError) as error:
            if not isinstance(error, smtplib.SMTPRecipientsRefused | smtplib.SMTPSenderRefused):
                # The connection's state is unknown after anything but a clean refusal.
                self.close()
            raise self._fail(error) from error

    def close(self) -> None:
        if self._connection is not None:
            _close(self._connection)
            self._connection = None


def _close(connection: smtplib.SMTP) -> None:
    try:
        connection.quit()
    except (smtplib.SMTPException, OSError):
        connection.close()


class SmtpTransport(EmailTransport):
    """Sends through an SMTP server given as `smtp://[user:pass@]host:port`.

    `smtps://` connects with implicit TLS, `?starttls=true` upgrades a plain connection; both
    verify the server certificate against the system store, or `ca_file` (a PEM bundle) for a
    private relay. Configure `url` with `dg.EnvVar("RUNHUB_SMTP_URL")` so that the Dagster UI
    shows the variable's name, not the password in it.
    """

    url: str
    timeout_seconds: float = DEFAULT_SMTP_TIMEOUT_SECONDS
    ca_file: str | None = None

    def endpoint(self) -> SmtpEndpoint:
        return parse_smtp_url(self.url)

    def describe(self) -> str:
        endpoint = self.endpoint()
        security = " (TLS)" if endpoint.implicit_tls else " (STARTTLS)" if endpoint.starttls else ""
        return f"SMTP {endpoint.label}{security}"

    def send(self, message: EmailMessage) -> None:
        with self.session() as session:
            session.send(message)

    @contextmanager
    def session(self) -> Iterator[EmailSender]:
        """One connection for a batch (opened on the first send, closed at the end)."""
        session = _SmtpSession(self.endpoint(), self.timeout_seconds, self.ca_file)
        try:
            yield session
        finally:
            session.close()


def transport_from_settings(smtp_url: str | None, outbox_dir: Path) -> EmailTransport:
    """SMTP when `RUNHUB_SMTP_URL` is set, else the file outbox (CONTRACT §1).

    Raises:
        SettingsError: the SMTP URL cannot be used (checked now, not at the first send).
    """
    if smtp_url:
        parse_smtp_url(smtp_url)
        return SmtpTransport(url=smtp_url)
    return FileOutboxTransport(directory=str(outbox_dir))
