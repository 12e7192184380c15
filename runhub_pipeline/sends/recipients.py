"""Who a workflow run mails (CONTRACT §7), read from the warehouse's published snapshot.

The SQL lives in `sql/sends/*.sql`; every query is scoped to one project (or, for the sensors,
grouped by project in one pass) and bound with values, never formatted. Callers pass a connection
from `Warehouse.reader()`: nothing here opens the warehouse for writing.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from runhub_pipeline.models import render_model
from runhub_pipeline.sends.policy import (
    ABANDONED_AFTER,
    ONBOARD_USERS,
    ONBOARDING_LOOKBACK,
    PROMO_LOOKBACK,
    RECOVER_ABANDONED,
    RECOVERY_WINDOW,
    SEND_PROMO,
    SKIP_INVALID_ADDRESS,
    SKIP_OUTSIDE_PROJECT,
    normalize_email,
)


@dataclass(frozen=True)
class Recipient:
    """One address to mail, in the order of its qualifying event (oldest first)."""

    email: str
    qualified_at: datetime
    # recover_abandoned: the sessions of the address's abandoned checkouts, so that a payment made
    # since under the same session (with another address) still counts as paid.
    session_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Audience:
    recipients: list[Recipient]
    # Addresses a run named that cannot be mailed, by skip reason.
    rejected: Mapping[str, list[str]]


@dataclass(frozen=True)
class AbandonedSummary:
    """A project's abandoned checkouts in the recovery window, as the sensor sees them."""

    abandoned: int
    newest_visible_at: datetime


def fetch_model(
    connection: duckdb.DuckDBPyConnection,
    name: str,
    params: Mapping[str, Any],
    **shape: Any,
) -> list[tuple[Any, ...]]:
    """Rows of the query `sql/sends/<name>.sql`, its `$name` placeholders bound to `params`."""
    return connection.execute(render_model(f"sends/{name}", **shape), dict(params)).fetchall()


def _recipients(rows: Sequence[tuple[Any, ...]]) -> list[Recipient]:
    return [
        Recipient(
            email=row[0],
            qualified_at=row[1],
            session_ids=tuple(sorted(row[2] or ())) if len(row) > 2 else (),
        )
        for row in rows
    ]


def audience(
    connection: duckdb.DuckDBPyConnection, project_id: str, action_id: str, now: datetime
) -> list[Recipient]:
    """The action's recipients in one project at wall-clock `now`, oldest qualifying event first."""
    if action_id == RECOVER_ABANDONED:
        params: dict[str, Any] = {
            "project_id": project_id,
            "window_start": now - RECOVERY_WINDOW,
            "window_end": now - ABANDONED_AFTER,
        }
    elif action_id == SEND_PROMO:
        params = {"project_id": project_id, "since": now - PROMO_LOOKBACK, "now": now}
    elif action_id == ONBOARD_USERS:
        params = {"project_id": project_id, "since": now - ONBOARDING_LOOKBACK, "now": now}
    else:
        raise ValueError(f"no audience for action {action_id!r}")
    return _recipients(fetch_model(connection, action_id, params))


def named_audience(
    connection: duckdb.DuckDBPyConnection, project_id: str, emails: Sequence[str]
) -> Audience:
    """The addresses a run names explicitly, kept only if they occur in the project's own events."""
    valid: list[str] = []
    rejected: dict[str, list[str]] = {SKIP_INVALID_ADDRESS: [], SKIP_OUTSIDE_PROJECT: []}
    for raw in emails:
        email = normalize_email(raw)
        if email is None:
            rejected[SKIP_INVALID_ADDRESS].append(raw)
        elif email not in valid:
            valid.append(email)
    found = _recipients(
        fetch_model(connection, "project_addresses", {"project_id": project_id, "emails": valid})
        if valid
        else []
    )
    known = {recipient.email for recipient in found}
    rejected[SKIP_OUTSIDE_PROJECT] = [email for email in valid if email not in known]
    return Audience(found, {reason: items for reason, items in rejected.items() if items})


def abandoned_by_project(
    connection: duckdb.DuckDBPyConnection, now: datetime
) -> dict[str, AbandonedSummary]:
    """Every project with abandoned checkouts in the recovery window, in one grouped query."""
    rows = fetch_model(
        connection,
        "abandoned_by_project",
        {
            "window_start": now - RECOVERY_WINDOW,
            "window_end": now - ABANDONED_AFTER,
            "abandoned_after": ABANDONED_AFTER,
        },
    )
    return {row[0]: AbandonedSummary(int(row[1]), row[2]) for row in rows}
