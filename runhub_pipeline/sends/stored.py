"""Values as each dialect stores them (times, JSON, flags, counts) and the per-key write lock,
shared by every sender.

The app may have written any ISO-8601 text, `1`/`'t'`/`'yes'` flags or JSON text on SQLite; these
helpers read what PostgreSQL and SQLite hand back alike and bind times each can compare.
"""

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runhub_pipeline.assets.ingest import window_bound
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.settings import parse_utc


def db_time(app_db: AppDatabase, moment: datetime) -> object:
    """A time to bind: fixed-width UTC text on SQLite (so text comparisons order as times)."""
    return window_bound(app_db, moment)


def coarse_since(app_db: AppDatabase, moment: datetime) -> object:
    """A lower bound safe against app-written times: on SQLite they may be any ISO-8601 text, so
    compare with a date a day earlier and filter exactly in Python after parsing."""
    if app_db.dialect == "sqlite":
        return (moment - timedelta(days=1)).date().isoformat()
    return moment


def parse_time(value: object) -> datetime | None:
    """A stored time as an aware UTC datetime; None when missing or not a time."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str) and value.strip():
        try:
            return parse_utc(value)
        except ValueError:
            return None
    return None


def parse_json(value: object) -> dict[str, Any]:
    """A JSON object column (jsonb on PostgreSQL, text on SQLite); {} when absent or garbage."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str | bytes):
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def parse_flag(value: object) -> bool:
    """A boolean column as the app may have stored it (true, 1, 't', 'yes' ...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "y", "yes", "on")
    return False


def iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def lock_key(app_db: AppDatabase, connection: Connection, key: str) -> None:
    """Serialize writers of `key` on PostgreSQL; SQLite writers already queue at BEGIN."""
    if app_db.dialect == "postgresql":
        connection.execute(sa.text("select pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


def parse_int(value: object) -> int:
    """A count column as stored (`attempts`); 0 when missing or not a number."""
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0
