"""MIME messages: header injection, unsubscribe headers, Message-IDs, and the file outbox."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from runhub_pipeline.resources.email import (
    EmailDeliveryError,
    FileOutboxTransport,
    SmtpTransport,
    message_bytes,
    transport_from_settings,
)
from runhub_pipeline.sends.message import (
    AddressError,
    HeaderInjectionError,
    address_domain,
    build_message,
    make_message_id,
    unsubscribe_link,
)
from runhub_pipeline.sends.render import MARKETING_KINDS, RenderedEmail, render_email
from runhub_pipeline.settings import SettingsError

FROM = "Run Hub <no-reply@runhub.localhost>"
TO = "buyer@example.com"
UNSUBSCRIBE_BASE = "http://localhost:8080/unsubscribe"
SENT_AT = datetime(2026, 3, 4, 8, 0, tzinfo=UTC)
RENDERED = RenderedEmail(subject="Hello", html="<p>Héllo</p>", text="Héllo\n")


def message(**overrides: Any) -> EmailMessage:
    arguments: dict[str, Any] = {
        "from_addr": FROM,
        "to_addr": TO,
        "subject": "Hello",
        "rendered": RENDERED,
        "message_id": make_message_id("workflow:run-1:buyer@example.com", "runhub.localhost"),
        "marketing": True,
        "unsubscribe_url": unsubscribe_link(UNSUBSCRIBE_BASE, "p1", TO),
        "date": SENT_AT,
        **overrides,
    }
    return build_message(**arguments)


def parsed(built: EmailMessage) -> EmailMessage:
    """The message as a receiver sees it after serialization."""
    result = email.message_from_bytes(message_bytes(built), policy=email.policy.default)
    assert isinstance(result, EmailMessage)
    return result


INJECTIONS = ["\r\nBcc: victim@example.com", "\nBcc: victim@example.com", "\rX: y", "\u2028X: y"]


@pytest.mark.parametrize("payload", INJECTIONS)
@pytest.mark.parametrize("field", ["subject", "to_addr", "from_addr", "message_id"])
def test_line_breaks_in_header_values_are_rejected(field: str, payload: str) -> None:
    value = {"subject": "Hello", "to_addr": TO, "from_addr": FROM, "message_id": "<a@b.example>"}
    with pytest.raises(HeaderInjectionError, match="line break"):
        message(**{field: value[field] + payload})


@pytest.mark.parametrize("payload", INJECTIONS)
def test_line_breaks_in_extra_headers_and_unsubscribe_url_are_rejected(payload: str) -> None:
    with pytest.raises(HeaderInjectionError):
        message(headers={"X-Runhub-Run-Id": "run-1" + payload})
    with pytest.raises(HeaderInjectionError):
        message(headers={"X-Bad\r\nBcc": "x"})
    with pytest.raises(HeaderInjectionError):
        message(unsubscribe_url=UNSUBSCRIBE_BASE + payload)


def test_injection_error_is_a_value_error() -> None:
    assert issubclass(HeaderInjectionError, ValueError)


@pytest.mark.parametrize(
    "address",
    ["", "not-an-address", "a@b", "a@example.com, b@example.com", "<>", "a b@example.com"],
)
def test_invalid_or_several_addresses_are_rejected(address: str) -> None:
    with pytest.raises(AddressError):
        message(to_addr=address)
    with pytest.raises(AddressError):
        message(from_addr=address)


def test_extra_headers_cannot_replace_managed_ones() -> None:
    with pytest.raises(ValueError, match="set by build_message"):
        message(headers={"bcc": "someone@example.com"})
    built = message(headers={"X-Runhub-Run-Id": "run-1"})
    assert parsed(built)["X-Runhub-Run-Id"] == "run-1"


def test_structure_is_utf8_multipart_alternative_text_then_html() -> None:
    received = parsed(message())

    assert received.get_content_type() == "multipart/alternative"
    parts = list(received.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    assert all(part.get_content_charset() == "utf-8" for part in parts)
    assert all(part["Content-Transfer-Encoding"] != "8bit" for part in parts)
    assert all(part["MIME-Version"] is None for part in parts)
    # MIME text is canonically CRLF-terminated, so that is what a receiver decodes.
    assert [part.get_content().replace("\r\n", "\n") for part in parts] == [
        "Héllo\n",
        "<p>Héllo</p>\n",
    ]
    assert received["Date"].datetime == SENT_AT
    assert received["From"].addresses[0].addr_spec == "no-reply@runhub.localhost"
    assert received["Auto-Submitted"] == "auto-generated"


def test_encoded_non_ascii_subject_round_trips() -> None:
    subject = "الملخص اليومي لـ متجر — الثلاثاء"
    raw = message_bytes(message(subject=subject))

    assert raw.isascii()  # every header is RFC 2047-encoded, every body part 7-bit
    assert parsed(message(subject=subject))["Subject"] == subject


@pytest.mark.parametrize("kind", sorted(MARKETING_KINDS))
def test_marketing_mail_has_one_click_unsubscribe(kind: str) -> None:
    link = unsubscribe_link(UNSUBSCRIBE_BASE, "project-1", "first.last+tag@example.com")
    context = {"project_name": "Acme", "unsubscribe_url": link}
    rendered = render_email(kind, "en", context)
    received = parsed(
        message(rendered=rendered, subject=rendered.subject, marketing=True, unsubscribe_url=link)
    )

    assert received["List-Unsubscribe"] == f"<{link}>"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    plain = received.get_body(("plain",))
    assert plain is not None and link in plain.get_content()


def test_service_mail_has_no_unsubscribe_headers() -> None:
    received = parsed(message(marketing=False, unsubscribe_url=None))

    assert received["List-Unsubscribe"] is None
    assert received["List-Unsubscribe-Post"] is None


def test_marketing_mail_without_unsubscribe_url_is_refused() -> None:
    with pytest.raises(ValueError, match="unsubscribe_url"):
        message(marketing=True, unsubscribe_url=None)
    with pytest.raises(ValueError, match="http"):
        message(marketing=True, unsubscribe_url="mailto:unsubscribe@example.com")


def test_long_unsubscribe_url_is_not_folded_or_encoded() -> None:
    link = unsubscribe_link(UNSUBSCRIBE_BASE, "p" * 150, "someone.with.a.long.name@example.com")
    raw = message_bytes(message(unsubscribe_url=link)).decode("ascii")

    assert f"\r\nList-Unsubscribe: <{link}>\r\n" in raw
    assert "=?utf-8?" not in raw


def test_message_id_is_deterministic() -> None:
    key = "digest:project-1:2026-03-03"
    first = make_message_id(key, address_domain(FROM))

    assert first == make_message_id(key, "runhub.localhost")
    assert first != make_message_id("digest:project-1:2026-03-04", "runhub.localhost")
    assert re.fullmatch(r"<[0-9a-f]{32}@runhub\.localhost>", first)
    assert "project-1" not in first
    assert parsed(message(message_id=first))["Message-ID"] == first
    assert address_domain("Shop <News@Mail.Example.COM>") == "mail.example.com"
    with pytest.raises(ValueError):
        make_message_id(key, "bad domain")


def test_unsubscribe_link_encodes_its_parameters() -> None:
    link = unsubscribe_link("https://app.example/u?lang=fr", "p&1=2", "a+b@example.com")
    parts = urlsplit(link)

    assert parts.scheme == "https" and parts.path == "/u"
    assert parse_qs(parts.query) == {
        "lang": ["fr"],
        "project_id": ["p&1=2"],
        "email": ["a+b@example.com"],
    }
    assert "a%2Bb%40example.com" in link and " " not in link
    with pytest.raises(ValueError):
        unsubscribe_link("javascript:alert(1)", "p", "a@example.com")


# --- file outbox ----------------------------------------------------------------------------


def test_outbox_write_is_idempotent_per_message_id(tmp_path: Path) -> None:
    outbox = FileOutboxTransport(directory=str(tmp_path / "outbox"))
    first = message(subject="first try")
    retry = message(subject="second try")  # same idempotency key → same Message-ID

    outbox.send(first)
    outbox.send(retry)
    outbox.send(message(message_id=make_message_id("another key", "runhub.localhost")))

    files = sorted((tmp_path / "outbox").iterdir())
    assert len(files) == 2 and all(path.suffix == ".eml" for path in files)
    stored = outbox.path_for(str(first["Message-ID"]))
    assert stored.name == str(first["Message-ID"]).strip("<>") + ".eml"
    with stored.open("rb") as handle:
        received = email.message_from_binary_file(handle, policy=email.policy.default)
    assert received["Subject"] == "second try"
    assert received["Message-ID"] == first["Message-ID"]


def test_outbox_names_stay_inside_the_directory(tmp_path: Path) -> None:
    outbox = FileOutboxTransport(directory=str(tmp_path))

    path = outbox.path_for("<../../etc/passwd@evil.example>")
    assert path.parent == tmp_path and not path.name.startswith(".")
    assert outbox.path_for("<.hidden@x.example>").name.startswith("hidden@x.example-")
    assert outbox.path_for("<a/b@x.example>") != outbox.path_for("<a_b@x.example>")


def test_outbox_failures_are_one_line_delivery_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    outbox = FileOutboxTransport(directory=str(blocker))

    with pytest.raises(EmailDeliveryError) as raised:
        outbox.send(message())
    assert str(raised.value).startswith(f"outbox {blocker}: ")
    assert "\n" not in str(raised.value)
    without_id = message()
    del without_id["Message-ID"]
    with pytest.raises(EmailDeliveryError, match="no Message-ID"):
        FileOutboxTransport(directory=str(tmp_path)).send(without_id)


def test_outbox_session_sends_each_message(tmp_path: Path) -> None:
    outbox = FileOutboxTransport(directory=str(tmp_path))
    with outbox.session() as session:
        for number in range(3):
            session.send(message(message_id=make_message_id(f"key-{number}", "x.example")))
    assert len(list(tmp_path.glob("*.eml"))) == 3
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_transport_from_settings(tmp_path: Path) -> None:
    outbox = transport_from_settings(None, tmp_path / "outbox")
    assert isinstance(outbox, FileOutboxTransport)
    assert outbox.describe() == f"file outbox {tmp_path / 'outbox'}"

    smtp = transport_from_settings("smtp://user:s3cret@mail.example:2525?starttls=true", tmp_path)
    assert isinstance(smtp, SmtpTransport)
    assert smtp.describe() == "SMTP mail.example:2525 (STARTTLS)"
    assert "s3cret" not in repr(smtp.endpoint())

    with pytest.raises(SettingsError, match="smtp:// or smtps://"):
        transport_from_settings("http://user:s3cret@mail.example", tmp_path)
