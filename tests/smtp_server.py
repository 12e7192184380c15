"""A real SMTP server for the tests (aiosmtpd): the handler that records what it accepts, the
running server, and a free port. The fixtures that start servers are in conftest.py."""

from __future__ import annotations

import email
import email.policy
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, LoginPassword, Session


@dataclass
class Received:
    envelope: Envelope
    peer: Any
    authenticated_as: str | None

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(
            self.envelope.original_content or b"", policy=email.policy.default
        )
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class RecordingHandler:
    """Keeps every message it accepts; refuses recipients whose address starts with "reject".

    `during_delivery`, when set, runs while a message is being accepted (another worker acting
    mid-send).
    """

    received: list[Received] = field(default_factory=list)
    during_delivery: Callable[[], None] | None = None

    @property
    def messages(self) -> list[EmailMessage]:
        return [item.message for item in self.received]

    @property
    def recipients(self) -> Counter[str]:
        """How many accepted messages each recipient got."""
        return Counter(address for item in self.received for address in item.envelope.rcpt_tos)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address.startswith("reject"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.during_delivery is not None:
            self.during_delivery()
        login = (
            session.auth_data.login.decode()
            if isinstance(session.auth_data, LoginPassword)
            else None
        )
        self.received.append(Received(envelope, session.peer, login))
        return "250 2.0.0 queued"


@dataclass
class SmtpServer:
    host: str
    port: int
    handler: RecordingHandler
    controller: Controller

    def url(self, scheme: str = "smtp", credentials: str = "", query: str = "") -> str:
        return f"{scheme}://{credentials}{self.host}:{self.port}{query}"


ServerFactory = Callable[..., SmtpServer]


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on: a server can start there, a client is
    refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
