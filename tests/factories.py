"""Hand-written source rows for tests, stored the way each dialect stores them (CONTRACT §3)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from runhub_pipeline.assets.ingest import IngestResult
from runhub_pipeline.assets.staging import ingest_and_stage as stage_in_one_transaction
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import Warehouse

FIXED_NOW = datetime(2026, 3, 30, 12, 0, tzinfo=UTC)


def utc(text: str) -> datetime:
    """`2026-03-01 10:00` → aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def stored(app_db: AppDatabase, value: Any) -> Any:
    """A datetime as the dialect stores it: fixed-width microsecond UTC text on SQLite."""
    if isinstance(value, datetime) and app_db.dialect == "sqlite":
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def insert_rows(app_db: AppDatabase, table: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert rows (column → value) into an app table; datetimes are stored per dialect."""
    if not rows:
        return
    columns = list(rows[0])
    statement = sa.insert(sa.table(table, *(sa.column(c) for c in columns)))
    with app_db.begin() as connection:
        connection.execute(
            statement, [{c: stored(app_db, row.get(c)) for c in columns} for row in rows]
        )


def project(project_id: str, **overrides: Any) -> dict[str, Any]:
    row = {
        "project_id": project_id,
        "name": f"Shop {project_id}",
        "timezone": "UTC",
        "currency": "USD",
        "locale": "en",
        "owner_email": f"owner@{project_id}.example.com",
        "digest_enabled": True,
        "digest_hour": 8,
        "auto_recover_abandoned": False,
        "stripe_connected": True,
        "tracking_installed": True,
        "forms_count": 1,
        "created_at": utc("2026-01-01 00:00"),
    }
    row.update(overrides)
    return row


def business_event(
    event_id: int,
    project_id: str,
    event_type: str | None,
    occurred_at: datetime | str | None,
    received_at: datetime,
    **overrides: Any,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": event_id,
        "project_id": project_id,
        "event_type": event_type,
        "occurred_at": occurred_at,
        "received_at": received_at,
        "idempotency_key": f"key-{event_id}",
        "actor_email": None,
        "session_id": None,
        "amount_cents": None,
        "currency": None,
        "payload": None,
    }
    row.update(overrides)
    return row


def analytics_event(
    event_id: int,
    project_id: str,
    event_name: str,
    session_id: str | None,
    occurred_at: datetime | str | None,
    received_at: datetime,
    **overrides: Any,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": event_id,
        "project_id": project_id,
        "event_name": event_name,
        "session_id": session_id,
        "anonymous_id": None,
        "path": "/",
        "occurred_at": occurred_at,
        "received_at": received_at,
    }
    row.update(overrides)
    return row


def ingest_and_stage(
    app_db: AppDatabase, warehouse: Warehouse, start: datetime, end: datetime
) -> IngestResult:
    """Run the ingest and staging layers for [start, end) without Dagster; what was read."""
    with warehouse.writer() as connection:
        ingested, _ = stage_in_one_transaction(app_db, connection, start, end, FIXED_NOW)
    return ingested


def warehouse_at(tmp_path: Path) -> Warehouse:
    return Warehouse(path=str(tmp_path / "warehouse.duckdb"))
