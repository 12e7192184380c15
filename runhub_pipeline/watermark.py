"""The watermark T (CONTRACT §2): the end of the highest 15-minute window ingested so far.

This is the one place T is read. Marts, checks and sensors compute everything that depends on
"now" as of T, never the wall clock; a re-run of an old window does not move it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Protocol

# Valid on DuckDB and PostgreSQL alike.
_LEDGER_EXISTS = "select count(*) from information_schema.tables where table_name = 'ingest_ledger'"
_WATERMARK = "select max(window_start) + interval '15 minutes' from ingest_ledger"


class _Connection(Protocol):
    def execute(self, query: Any) -> Any: ...


def current_watermark(connection: _Connection) -> datetime | None:
    """T as an aware UTC datetime, or None when no window has been ingested yet.

    Takes a DuckDB connection (writer or read-only snapshot) or a psycopg connection.
    """
    exists = connection.execute(_LEDGER_EXISTS).fetchone()
    if not exists or not exists[0]:
        return None
    row = connection.execute(_WATERMARK).fetchone()
    if row is None or row[0] is None:
        return None
    value: datetime = row[0]
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
