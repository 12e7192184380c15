"""The MIME message of one e-mail: validated headers, text + HTML parts, a deterministic Message-ID.

Every header value is checked for line breaks before it reaches the `email` package, because a
CR or LF in a value taken from the app database (a project name in the subject, an address)
would otherwise let it add headers or recipients of its own.
"""

from __future__ import annotations

import email.policy
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from runhub_pipeline.sends.render import RenderedEmail

# Headers written exactly as given. The email package folds a long header without spaces (a
# long unsubscribe URL) by turning it into RFC 2047 encoded-words, which no mail client reads as a
# URL; these values are ASCII without whitespace and fit the 998-character line limit, so they
# need no folding at all.
_VERBATIM_HEADERS = frozenset({"list-unsubscribe", "list-unsubscribe-post", "message-id"})
MAX_HEADER_LINE = 998


class _MessagePolicy(email.policy.EmailPolicy):
    def _verbatim(self, name: str, value: object) -> str | None:
        text = str(value)
        line = f"{name}: {text}"
        if name.lower() in _VERBATIM_HEADERS and line.isascii() and len(line) <= MAX_HEADER_LINE:
            return line + self.linesep
        return None

    def fold(self, name: str, value: str) -> str:
        return self._verbatim(name, value) or super().fold(name, value)

    def fold_binary(self, name: str, value: str) -> bytes:
        line = self._verbatim(name, value)
        return line.encode("ascii") if line else super().fold_binary(name, value)


# CRLF line ends as on the wire, and 7-bit transfer encodings (quoted-printable or base64) for
# UTF-8 bodies, so any SMTP server accepts the message without the 8BITMIME extension.
MESSAGE_POLICY = _MessagePolicy(linesep="\r\n", cte_type="7bit")

LIST_UNSUBSCRIBE_POST = "List-Unsubscribe=One-Click"
# Headers build_message owns; `headers=` may not override them.
_MANAGED_HEADERS = frozenset(
    name.lower()
    for name in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Date",
        "Message-ID",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "Auto-Submitted",
    )
)
# CR and LF, plus every other character Python's line splitting treats as a line end.
_LINE_BREAK = re.compile(r"[\r\n\x00\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")  # RFC 5322 ftext
_DOMAIN = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")
# Plain ASCII addresses only: non-ASCII local parts would need SMTPUTF8 from every relay.
_ADDR_SPEC = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@(?P<domain>[^@]+)$")
_MESSAGE_ID = re.compile(r"^<[^<>@\s]+@[^<>@\s]+>$")


class HeaderInjectionError(ValueError):
    """A header value holds a CR, LF or other line break."""


class AddressError(ValueError):
    """Not exactly one valid e-mail address."""


def check_header_value(name: str, value: str) -> str:
    """Return `value` unchanged, or raise HeaderInjectionError if it could start a new line."""
    if _LINE_BREAK.search(value):
        raise HeaderInjectionError(f"header {name} contains a line break (CR or LF)")
    return value


def parse_address(value: str, field: str = "To") -> Address:
    """One address (`a@b.example` or `Name <a@b.example>`), else AddressError.

    Raises:
        HeaderInjectionError: the value holds a line break.
        AddressError: none, several (`a@x.com, b@y.com`) or a malformed address.
    """
    check_header_value(field, value)
    header = MESSAGE_POLICY.header_factory(field, value)
    addresses: tuple[Address, ...] = getattr(header, "addresses", ())
    if len(addresses) != 1 or header.defects:
        raise AddressError(f"{field} must be exactly one e-mail address, got {value!r}")
    address = addresses[0]
    match = _ADDR_SPEC.match(address.addr_spec)
    if not match or not _DOMAIN.match(match.group("domain")):
        raise AddressError(f"{field} is not a valid e-mail address: {value!r}")
    return address


def address_domain(address: str) -> str:
    """The lower-cased domain of an address: `Run Hub <no-reply@runhub.localhost>` → host."""
    return parse_address(address, "From").domain.lower()


def make_message_id(idempotency_key: str, domain: str) -> str:
    """`<sha256(key)[:32]@domain>`: a retried send carries the same Message-ID as the first.

    Receivers and the file outbox can then recognize the retry as the same message; the hash
    keeps the key (which contains the recipient's address) out of the header.
    """
    check_header_value("Message-ID", domain)
    if not _DOMAIN.match(domain):
        raise ValueError(f"not a domain for a Message-ID: {domain!r}")
    digest = hashlib.sha256(idempotency_key.encode("utf-8")).hexdigest()[:32]
    return f"<{digest}@{domain.lower()}>"


def unsubscribe_link(base_url: str, project_id: str, email_address: str) -> str:
    """The recipient's one-click unsubscribe link: `base_url?project_id=…&email=…`.

    The parameters are percent-encoded (`@` → `%40`), and any query already in `base_url` is
    kept. The link carries no token: the app's unsubscribe endpoint (RUNHUB_UNSUBSCRIBE_URL)
    decides whether it trusts it; signing it would need a secret this pipeline does not hold.
    """
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"the unsubscribe base URL must be http(s), got {base_url!r}")
    query = [
        *parse_qsl(parts.query, keep_blank_values=True),
        ("project_id", project_id),
        ("email", email_address),
    ]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def build_message(
    *,
    from_addr: str,
    to_addr: str,
    subject: str,
    rendered: RenderedEmail,
    message_id: str,
    marketing: bool,
    unsubscribe_url: str | None,
    headers: Mapping[str, str] | None = None,
    date: datetime | None = None,
) -> EmailMessage:
    """A multipart/alternative (text, then HTML) UTF-8 message ready for a transport.

    Args:
        marketing: recovery, promo, update and onboarding mail (CONTRACT §7). It gets
            `List-Unsubscribe: <url>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
            (RFC 8058) and then needs `unsubscribe_url`; service mail (the digest) gets neither
            and `unsubscribe_url` is ignored.
        message_id: usually `make_message_id(idempotency_key, address_domain(from_addr))`.
        headers: extra headers (e.g. `X-Runhub-Run-Id`); they may not replace the ones above.
        date: the send time for the Date header (wall clock, passed in); now when omitted.

    Raises:
        HeaderInjectionError: a line break in any header value.
        AddressError: `from_addr` or `to_addr` is not exactly one valid address.
        ValueError: a malformed Message-ID, header name or unsubscribe URL.
    """
    sender = parse_address(from_addr, "From")
    recipient = parse_address(to_addr, "To")
    check_header_value("Subject", subject)
    check_header_value("Message-ID", message_id)
    if not _MESSAGE_ID.match(message_id):
        raise ValueError(f"Message-ID must look like <id@domain>, got {message_id!r}")
    if date is not None and date.tzinfo is None:
        raise ValueError("date must be timezone-aware")
    extra = dict(headers or {})
    for name, value in extra.items():
        if not _HEADER_NAME.match(name):
            raise HeaderInjectionError(f"invalid header name {name!r}")
        if name.lower() in _MANAGED_HEADERS:
            raise ValueError(f"header {name} is set by build_message, not by headers=")
        check_header_value(name, value)

    message = EmailMessage(policy=MESSAGE_POLICY)
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = format_datetime((date or datetime.now(UTC)).astimezone(UTC))
    message["Message-ID"] = message_id
    # RFC 3834: tells vacation responders not to answer an automated sender.
    message["Auto-Submitted"] = "auto-generated"
    if marketing:
        if unsubscribe_url is None:
            raise ValueError("marketing mail needs an unsubscribe_url (RFC 8058)")
        check_header_value("List-Unsubscribe", unsubscribe_url)
        parts = urlsplit(unsubscribe_url)
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or re.search(r"[\s<>]", unsubscribe_url)
        ):
            raise ValueError(f"unsubscribe_url must be an http(s) URL, got {unsubscribe_url!r}")
        if len(f"List-Unsubscribe: <{unsubscribe_url}>") > MAX_HEADER_LINE:
            raise ValueError("unsubscribe_url is too long for one header line")
        message["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        message["List-Unsubscribe-Post"] = LIST_UNSUBSCRIBE_POST
    for name, value in extra.items():
        message[name] = value
    message.set_content(rendered.text, subtype="plain", charset="utf-8")
    message.add_alternative(rendered.html, subtype="html", charset="utf-8")
    for part in message.iter_parts():
        # add_alternative copies MIME-Version into the parts; it belongs on the top level only.
        del part["MIME-Version"]
    return message
