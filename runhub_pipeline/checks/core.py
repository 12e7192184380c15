"""The vocabulary of the data-quality checks: what a check sees, what it returns, how it queries.

A check is a plain function `CheckEnv -> Outcome`. It reads the warehouse through a read-only
connection (`Warehouse.run_reader`: what its run wrote, or the published snapshot in a check-only
run) and, for source reconciliation, the app database. `CheckScope` says which ingest
windows the run covered, so range runs (backfills) are checked over their whole range. Dagster is
only involved in `definitions.py`, which turns outcomes into `AssetCheckResult`s.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import duckdb
import jinja2
import pandas as pd

from runhub_pipeline.resources.app_db import AppDatabase

Severity = Literal["ERROR", "WARN"]

_JINJA = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)
_PARAMETER = re.compile(r"\$([a-z_][a-z0-9_]*)")


@dataclass(frozen=True)
class CheckScope:
    """What one evaluation covers.

    Attributes:
        window_start: start of the first ingest window of the run (inclusive).
        window_end: end of the last ingest window of the run (exclusive).
        run_started_at: rows stamped at or after this moment were (re)written by this run.
        now: the wall clock at evaluation time (freshness only).
    """

    window_start: datetime
    window_end: datetime
    run_started_at: datetime
    now: datetime

    def describe(self) -> str:
        return f"windows [{self.window_start:%Y-%m-%d %H:%M}, {self.window_end:%Y-%m-%d %H:%M}) UTC"

    def params(self) -> dict[str, Any]:
        return {
            "window_start": self.window_start,
            "window_end": self.window_end,
            "run_started_at": self.run_started_at,
            "now": self.now,
        }


@dataclass(frozen=True)
class Thresholds:
    """Tunable limits of the statistical checks; defaults are the ones in the README."""

    quarantine_min_rows: int = 100
    quarantine_warn_share: float = 0.01
    quarantine_error_share: float = 0.05
    # Volume anomaly: compared with the same window 1..volume_weeks weeks earlier.
    volume_weeks: int = 4
    volume_min_weeks: int = 2
    volume_min_rows: int = 50
    volume_low_ratio: float = 0.3
    volume_high_ratio: float = 3.0
    # A window is due `freshness_slack` after its end plus the ingestion lag.
    freshness_slack: timedelta = timedelta(minutes=15)
    sample_rows: int = 5


@dataclass(frozen=True)
class CheckOptions:
    """Settings the checks need, passed in when the Definitions are built."""

    home: Path
    ingest_lag: timedelta
    late_lookback: timedelta
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def data_docs_dir(self) -> Path:
        return data_docs_dir(self.home)

    @property
    def gx_results_dir(self) -> Path:
        return gx_results_dir(self.home)


def data_docs_dir(home: Path) -> Path:
    """The Great Expectations Data Docs site."""
    return home / "data_docs"


def gx_results_dir(home: Path) -> Path:
    """Every GX validation result as JSON, one folder per suite: the source of the Data Docs."""
    return home / "gx_results"


@dataclass(frozen=True)
class CheckEnv:
    connection: duckdb.DuckDBPyConnection
    scope: CheckScope
    options: CheckOptions
    app_db: AppDatabase | None = None
    run_id: str = "local"

    @property
    def thresholds(self) -> Thresholds:
        return self.options.thresholds


@dataclass(frozen=True)
class Outcome:
    passed: bool
    description: str
    severity: Severity = "ERROR"
    metadata: Mapping[str, Any] = field(default_factory=dict)


def render(template: str, **shape: Any) -> str:
    """A check query with its shape (table and column names, constants only) filled in."""
    return _JINJA.from_string(template).render(**shape)


def fetch(
    connection: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any] | None = None
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run one query, binding only the `$name` values it uses; returns (columns, rows)."""
    cursor = connection.execute(sql, _used(sql, params))
    columns = [column[0] for column in cursor.description or []]
    return columns, cursor.fetchall()


def fetch_frame(
    connection: duckdb.DuckDBPyConnection, sql: str, params: Mapping[str, Any] | None = None
) -> pd.DataFrame:
    """Run one query into a pandas DataFrame, binding only the `$name` values it uses."""
    return connection.execute(sql, _used(sql, params)).df()


def _used(sql: str, params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    values = dict(params or {})
    return {name: values[name] for name in _PARAMETER.findall(sql)} or None


def table_exists(connection: duckdb.DuckDBPyConnection, table: str) -> bool:
    row = connection.execute(
        "select count(*) from information_schema.tables where table_name = $name",
        {"name": table},
    ).fetchone()
    return bool(row and row[0])


@dataclass(frozen=True)
class Offenders:
    """Rows that break a rule: how many, and the first few for the metadata."""

    count: int
    columns: list[str]
    sample: list[tuple[Any, ...]]

    def metadata(self) -> dict[str, Any]:
        return {"unexpected_rows": self.count, "sample": markdown_table(self.columns, self.sample)}


_COUNT = "select count(*) from ({{ inner }}) as offending"
_SAMPLE = "select * from ({{ inner }}) as offending limit {{ limit }}"


def offenders(
    connection: duckdb.DuckDBPyConnection,
    inner: str,
    params: Mapping[str, Any],
    limit: int,
) -> Offenders:
    """Count the rows of `inner` (a query selecting offending rows) and keep a sample."""
    _, count_rows = fetch(connection, render(_COUNT, inner=inner), params)
    count = int(count_rows[0][0]) if count_rows else 0
    if not count:
        return Offenders(0, [], [])
    columns, sample = fetch(connection, render(_SAMPLE, inner=inner, limit=int(limit)), params)
    return Offenders(count, columns, sample)


def no_offenders(
    env: CheckEnv,
    inner: str,
    *,
    failed: Callable[[int], str],
    passed: str,
    params: Mapping[str, Any] | None = None,
    severity: Severity = "ERROR",
    metadata: Mapping[str, Any] | None = None,
    sample_rows: int | None = None,
) -> Outcome:
    """The outcome of a rule whose query `inner` selects the rows that break it.

    Passes when it selects none. Otherwise `failed(count)` describes the failure; either way the
    metadata holds `metadata`, the count and a sample of `sample_rows` rows (the threshold's by
    default).
    """
    limit = env.thresholds.sample_rows if sample_rows is None else sample_rows
    found = offenders(env.connection, inner, params or {}, limit)
    return Outcome(
        passed=found.count == 0,
        description=failed(found.count) if found.count else passed,
        severity=severity,
        metadata={**(metadata or {}), **found.metadata()},
    )


class Markdown(str):
    """Metadata text that the Dagster UI should render as Markdown."""

    __slots__ = ()


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> Markdown:
    """A small Markdown table for Dagster metadata (the UI renders it)."""
    if not rows:
        return Markdown("(none)")
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(value) for value in row) + " |")
    return Markdown("\n".join(lines))


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, date):
        return value.isoformat()
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 120 else text[:117] + "..."
