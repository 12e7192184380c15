"""Source reconciliation: the ledger against a fresh count of the app database.

For every window whose source rows the run read, the source rows are recounted in the app
database (one grouped COUNT per source table, by 15-minute `received_at` bucket) and compared
with the ledger: source count = ledger.source_rows = staged + duplicates + quarantined. A row
committed after its window was read (a late commit) fails this check until the late-commit sensor
re-reads the window; that is the point of the check.

Windows the run only re-staged (a copy of one of its idempotency keys sits there, so their
duplicate counts moved) are not recounted: the run did not read them, and `ledger_balances`
checks their counts add up. Recounting them cost a tick up to 0.3 s, hundreds of windows of rows.
"""

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from runhub_pipeline.assets.ingest import window_bound
from runhub_pipeline.checks.core import CheckEnv, Outcome, fetch, markdown_table, render
from runhub_pipeline.checks.staging_rules import INGESTED_SCOPE, SOURCE_TABLES
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.settings import WINDOW

# SQLite keeps received_at as fixed-width UTC text, so the bucket is text arithmetic.
_SOURCE_COUNTS = """
select w.window_start, count(*) as source_rows
from (
    select
{%- if dialect == "postgresql" %}
        date_trunc('hour', s.received_at)
            + floor(extract(minute from s.received_at) / 15) * interval '15 minutes'
            as window_start
{%- else %}
        substr(s.received_at, 1, 14)
            || printf('%02d', (cast(substr(s.received_at, 15, 2) as integer) / 15) * 15)
            as window_start
{%- endif %}
    from {{ table }} as s
    where {% for span in spans -%}
        (s.received_at >= :start_{{ loop.index }} and s.received_at < :end_{{ loop.index }})
        {{- " or " if not loop.last }}
    {% endfor %}
) as w
group by w.window_start
"""

_LEDGER_ROWS = """
select l.source_table, l.window_start, l.source_rows, l.staged, l.duplicates, l.quarantined
from ingest_ledger as l
where {{ scope }}
order by l.window_start, l.source_table
"""


def spans_of(windows: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
    """The 15-minute windows starting at `windows` as the fewest [start, end) spans."""
    spans: list[tuple[datetime, datetime]] = []
    for start in sorted(set(windows)):
        if spans and spans[-1][1] == start:
            spans[-1] = (spans[-1][0], start + WINDOW)
        else:
            spans.append((start, start + WINDOW))
    return spans


def count_source_rows(
    app_db: AppDatabase, table: str, windows: Iterable[datetime]
) -> dict[datetime, int]:
    """Rows of `table` per 15-minute `received_at` window, for the windows starting at
    `windows`, read from the app.

    Only those windows, not the span from the first to the last: a run's windows are its range
    plus any older window it re-read (a late re-read), and the span between them can hold days
    of events.
    """
    spans = spans_of(windows)
    if not spans:
        return {}
    sql = render(_SOURCE_COUNTS, dialect=app_db.dialect, table=table, spans=spans)
    params = {}
    for index, (start, end) in enumerate(spans, start=1):
        params[f"start_{index}"] = window_bound(app_db, start)
        params[f"end_{index}"] = window_bound(app_db, end)
    with app_db.begin() as connection:
        rows = connection.execute(sa.text(sql), params).all()
    return {_as_window(row[0]): int(row[1]) for row in rows}


def _as_window(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.strptime(str(value), "%Y-%m-%dT%H:%M").replace(tzinfo=UTC)


def source_reconciliation(env: CheckEnv) -> Outcome:
    if env.app_db is None:
        return Outcome(False, "no app database to recount the source rows in")
    columns, ledger = fetch(
        env.connection, render(_LEDGER_ROWS, scope=INGESTED_SCOPE), env.scope.params()
    )
    windows = {row[1].astimezone(UTC) for row in ledger}
    first, end = env.scope.window_start, env.scope.window_end
    windows.update(first + index * WINDOW for index in range((end - first) // WINDOW))
    source = {table: count_source_rows(env.app_db, table, windows) for table in SOURCE_TABLES}
    mismatched = _compare(ledger, source, env.scope.window_start, env.scope.window_end)
    metadata = {
        "scope": env.scope.describe(),
        "ledger_rows_compared": len(ledger),
        "source_rows_recounted": sum(sum(c.values()) for c in source.values()),
        "unexpected_rows": len(mismatched),
        "sample": markdown_table(
            ["source_table", "window_start", "app_db_rows", *columns[2:]],
            mismatched[: env.thresholds.sample_rows],
        ),
    }
    if mismatched:
        return Outcome(
            False,
            f"{len(mismatched)} windows where the app database, the ledger and the staged tables"
            " disagree",
            metadata=metadata,
        )
    return Outcome(
        True,
        f"{len(ledger)} ledger rows match the app database ({env.scope.describe()})",
        metadata=metadata,
    )


def _compare(
    ledger: list[tuple[Any, ...]],
    source: Mapping[str, Mapping[datetime, int]],
    range_start: datetime,
    range_end: datetime,
) -> list[tuple[Any, ...]]:
    mismatched: list[tuple[Any, ...]] = []
    seen: set[tuple[str, datetime]] = set()
    for table, window, source_rows, staged, duplicates, quarantined in ledger:
        start = window.astimezone(UTC)
        seen.add((table, start))
        recounted = source.get(table, {}).get(start, 0)
        if not recounted == source_rows == staged + duplicates + quarantined:
            mismatched.append(
                (table, start, recounted, source_rows, staged, duplicates, quarantined)
            )
    # Source rows of the run's range whose window has no ledger row at all.
    for table, counts in source.items():
        for start, recounted in sorted(counts.items()):
            if range_start <= start < range_end and (table, start) not in seen:
                mismatched.append((table, start, recounted, None, None, None, None))
    return mismatched
