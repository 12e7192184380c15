"""SmtpTransport against a real SMTP server (aiosmtpd), started by the `smtp_server` and
`smtp_server_factory` fixtures in conftest.py."""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from runhub_pipeline.resources.email import EmailDeliveryError, SmtpTransport
from runhub_pipeline.sends.digest_context import build_digest_context
from runhub_pipeline.sends.message import (
    address_domain,
    build_message,
    make_message_id,
    unsubscribe_link,
)
from runhub_pipeline.sends.render import render_email
from tests.smtp_server import ServerFactory, SmtpServer

FROM = "Run Hub <no-reply@runhub.localhost>"
REPORTED_DAY = date(2026, 3, 3)


def digest_message(to_addr: str = "owner@example.com", locale: str = "ar") -> EmailMessage:
    kpis = {
        REPORTED_DAY - timedelta(days=offset): {"revenue_cents": 10_000 + 100 * offset, "orders": 9}
        for offset in range(15)
    }
    context = build_digest_context(
        locale,
        project_name="متجر الواحة",
        reported_day=REPORTED_DAY,
        currency="EGP",
        daily_kpis=kpis,
        alert_counts={"payment_failed": 1},
        abandoned_open=2,
        abandoned_24h=2,
        recovery_enabled=True,
    )
    rendered = render_email("daily_digest", locale, context)
    key = f"digest:project-1:{REPORTED_DAY.isoformat()}"
    return build_message(
        from_addr=FROM,
        to_addr=to_addr,
        subject=rendered.subject,
        rendered=rendered,
        message_id=make_message_id(key, address_domain(FROM)),
        marketing=False,
        unsubscribe_url=None,
        date=datetime(2026, 3, 4, 6, 0, tzinfo=UTC),
    )


def promo_message(to_addr: str, number: int = 0) -> EmailMessage:
    link = unsubscribe_link("http://localhost:8080/unsubscribe", "project-1", to_addr)
    rendered = render_email("promo", "fr-FR", {"project_name": "Boutique", "unsubscribe_url": link})
    return build_message(
        from_addr=FROM,
        to_addr=to_addr,
        subject=rendered.subject,
        rendered=rendered,
        message_id=make_message_id(f"workflow:run-{number}:{to_addr}", "runhub.localhost"),
        marketing=True,
        unsubscribe_url=link,
        headers={"X-Runhub-Run-Id": f"run-{number}"},
    )


def test_digest_arrives_as_utf8_multipart_with_arabic_subject(smtp_server: SmtpServer) -> None:
    sent = digest_message()
    SmtpTransport(url=smtp_server.url()).send(sent)

    [received] = smtp_server.handler.received
    assert received.envelope.mail_from == "no-reply@runhub.localhost"
    assert received.envelope.rcpt_tos == ["owner@example.com"]
    message = received.message
    assert message["Subject"] == "الملخص اليومي لـ متجر الواحة — الثلاثاء، 3 مارس 2026"
    assert message["Message-ID"] == sent["Message-ID"]
    assert message["To"] == "owner@example.com"
    assert message["List-Unsubscribe"] is None and message["List-Unsubscribe-Post"] is None
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert (text.get_content_type(), html.get_content_type()) == ("text/plain", "text/html")
    assert text.get_content_charset() == html.get_content_charset() == "utf-8"
    assert isinstance(html, EmailMessage) and isinstance(text, EmailMessage)
    assert '<html lang="ar" dir="rtl">' in html.get_content()
    assert html.get_content().count('class="bar"') == 14
    assert "سلتا تسوق متروكتان خلال آخر 24 ساعة — رسائل الاسترداد مفعّلة" in text.get_content()
    assert "<" not in text.get_content()


def test_marketing_headers_survive_transit(smtp_server: SmtpServer) -> None:
    SmtpTransport(url=smtp_server.url()).send(promo_message("buyer+1@example.com"))

    message = smtp_server.handler.received[0].message
    assert message["List-Unsubscribe"] == (
        "<http://localhost:8080/unsubscribe?project_id=project-1&email=buyer%2B1%40example.com>"
    )
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Runhub-Run-Id"] == "run-0"
    assert message["Subject"] == "Une offre spéciale de Boutique"


def test_a_session_sends_a_thousand_messages_over_one_connection(smtp_server: SmtpServer) -> None:
    transport = SmtpTransport(url=smtp_server.url())
    with transport.session() as session:
        for number in range(1000):
            session.send(promo_message(f"lead{number}@example.com", number))

    received = smtp_server.handler.received
    assert len(received) == 1000
    assert len({item.peer for item in received}) == 1
    assert received[-1].envelope.rcpt_tos == ["lead999@example.com"]


def test_a_refused_recipient_fails_alone(smtp_server: SmtpServer) -> None:
    transport = SmtpTransport(url=smtp_server.url())
    with transport.session() as session:
        session.send(promo_message("first@example.com"))
        with pytest.raises(EmailDeliveryError) as raised:
            session.send(promo_message("reject-me@example.com"))
        session.send(promo_message("third@example.com"))

    reason = str(raised.value)
    assert reason.startswith(f"smtp 127.0.0.1:{smtp_server.port}: recipient refused (")
    assert "550" in reason and "\n" not in reason
    received = smtp_server.handler.received
    assert [item.envelope.rcpt_tos for item in received] == [
        ["first@example.com"],
        ["third@example.com"],
    ]
    assert len({item.peer for item in received}) == 1


def test_a_dropped_idle_connection_is_reopened(smtp_server_factory: ServerFactory) -> None:
    first_server = smtp_server_factory()
    transport = SmtpTransport(url=first_server.url())
    with transport.session() as session:
        session.send(promo_message("first@example.com"))
        first_server.controller.stop()  # closes the session's connection under it
        second_server = smtp_server_factory(port=first_server.port)
        session.send(promo_message("second@example.com"))

    assert len(first_server.handler.received) == 1
    assert [item.envelope.rcpt_tos for item in second_server.handler.received] == [
        ["second@example.com"]
    ]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_credentials_from_the_url_log_in(smtp_server_factory: ServerFactory) -> None:
    def authenticator(
        server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        valid = isinstance(data, LoginPassword) and (data.login, data.password) == (
            b"mailer@runhub",
            b"p@ss:word",
        )
        # handled=False: aiosmtpd then answers a failure with 535 itself.
        return AuthResult(success=valid, handled=False, auth_data=data)

    server = smtp_server_factory(
        authenticator=authenticator, auth_required=True, auth_require_tls=False
    )
    SmtpTransport(url=server.url(credentials="mailer%40runhub:p%40ss%3Aword@")).send(
        digest_message()
    )
    assert server.handler.received[0].authenticated_as == "mailer@runhub"

    with pytest.raises(EmailDeliveryError, match=r"authentication failed \(535"):
        SmtpTransport(url=server.url(credentials="mailer%40runhub:wrong@")).send(digest_message())


def test_unreachable_server_is_a_one_line_error() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused
        port = closed.getsockname()[1]
        with pytest.raises(EmailDeliveryError) as raised:
            SmtpTransport(url=f"smtp://127.0.0.1:{port}").send(digest_message())

    assert str(raised.value) == f"smtp 127.0.0.1:{port}: connection refused"


def test_silent_server_times_out_with_a_one_line_error() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)  # accepts the TCP handshake, never says hello
        port = silent.getsockname()[1]
        transport = SmtpTransport(url=f"smtp://127.0.0.1:{port}", timeout_seconds=0.3)
        with pytest.raises(EmailDeliveryError) as raised:
            transport.send(digest_message())

    assert str(raised.value) == f"smtp 127.0.0.1:{port}: timed out after 0.3s"


# --- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (certificate, key)."""
    pytest.importorskip("cryptography")
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runhub test smtp")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def server_tls_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def test_starttls(smtp_server_factory: ServerFactory, certificate: tuple[Path, Path]) -> None:
    server = smtp_server_factory(tls_context=server_tls_context(certificate), require_starttls=True)
    url = server.url(query="?starttls=true")
    SmtpTransport(url=url, ca_file=str(certificate[0])).send(digest_message())
    assert len(server.handler.received) == 1

    with pytest.raises(EmailDeliveryError, match="TLS certificate not trusted"):
        SmtpTransport(url=url).send(digest_message())  # the system store does not know it
    with pytest.raises(EmailDeliveryError, match="530"):
        SmtpTransport(url=server.url()).send(digest_message())  # plain text is refused


def test_implicit_tls(smtp_server_factory: ServerFactory, certificate: tuple[Path, Path]) -> None:
    server = smtp_server_factory(ssl_context=server_tls_context(certificate))
    SmtpTransport(url=server.url("smtps"), ca_file=str(certificate[0])).send(digest_message())

    assert server.handler.received[0].message["Subject"].startswith("الملخص اليومي")
