"""The per-project overview printed by `runhub demo`: what the Run Hub overview page shows.

Read from the published warehouse snapshot, as of the watermark T: today's and yesterday's KPIs
(project-local days), the alert counts of the last 24 hours, open abandoned checkouts, workflow
runs and digest delivery.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from typing import Any

import duckdb

from runhub_pipeline.watermark import current_watermark

_PROJECTS = """
select
    o.project_id,
    coalesce(p.name, o.project_id) as name,
    p.timezone,
    p.currency,
    cast($as_of at time zone p.timezone as date) as today,
    o.payment_failed_24h,
    o.checkout_started_24h,
    o.abandoned_open,
    o.recovered_revenue_cents_7d,
    o.workflow_queued_7d,
    o.workflow_running_7d,
    o.workflow_succeeded_7d,
    o.workflow_failed_7d,
    o.stuck_runs,
    o.digest_sent_30d,
    o.digest_failed_30d,
    o.last_event_received_at
from run_overview as o
join stg_projects as p on p.project_id = o.project_id
order by o.project_id
"""

_DAYS = """
select
    k.project_id,
    k.day,
    k.sessions,
    k.visitors,
    k.page_views,
    k.orders,
    k.revenue_cents,
    k.refunded_cents,
    k.net_revenue_cents,
    k.conversion_rate,
    k.checkouts_started,
    k.abandoned_checkouts,
    k.recovered_checkouts,
    k.recovered_revenue_cents,
    k.payments_failed,
    k.form_submissions,
    k.leads
from business_kpi_daily as k
join stg_projects as p on p.project_id = k.project_id
where k.day >= cast($as_of at time zone p.timezone as date) - 1
    and k.day <= cast($as_of at time zone p.timezone as date)
"""

# (label, business_kpi_daily column, kind)
_KPI_LINES: tuple[tuple[str, str, str], ...] = (
    ("sessions", "sessions", "count"),
    ("visitors", "visitors", "count"),
    ("page views", "page_views", "count"),
    ("orders", "orders", "count"),
    ("revenue", "revenue_cents", "money"),
    ("refunded", "refunded_cents", "money"),
    ("net revenue", "net_revenue_cents", "money"),
    ("conversion rate", "conversion_rate", "rate"),
    ("checkouts started", "checkouts_started", "count"),
    ("abandoned checkouts", "abandoned_checkouts", "count"),
    ("recovered checkouts", "recovered_checkouts", "count"),
    ("recovered revenue", "recovered_revenue_cents", "money"),
    ("payments failed", "payments_failed", "count"),
    ("form submissions", "form_submissions", "count"),
    ("leads", "leads", "count"),
)


def _money(cents: int | None, currency: str | None) -> str:
    value = cents or 0
    sign = "-" if value < 0 else ""
    whole, fraction = divmod(abs(value), 100)
    return f"{sign}{whole:,}.{fraction:02d} {currency or ''}".rstrip()


def _cell(value: Any, kind: str, currency: str | None) -> str:
    if kind == "money":
        return _money(value, currency)
    if kind == "rate":
        return "n/a" if value is None else f"{value:.1%}"
    return f"{value or 0:,}"


def _rows(connection: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> list[dict]:
    cursor = connection.execute(sql, params)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
    return [
        "  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                         enumerate(zip(row, widths, strict=True)))
        for row in [header, *lines]
    ]  # fmt: skip


def format_overview(reader_connection: duckdb.DuckDBPyConnection, today_only: bool = False) -> str:
    """The overview of every project as of T, as plain text (one block per project)."""
    as_of = current_watermark(reader_connection)
    if as_of is None:
        return "No window has been ingested yet: run `runhub backfill` first."
    params = {"as_of": as_of}
    projects = _rows(reader_connection, _PROJECTS, params)
    days: dict[tuple[str, date], dict[str, Any]] = {
        (row["project_id"], row["day"]): row for row in _rows(reader_connection, _DAYS, params)
    }
    out = [f"Run Hub overview as of {as_of:%Y-%m-%d %H:%M} UTC ({len(projects)} projects)"]
    for project in projects:
        today: date = project["today"]
        shown = [today] if today_only else [today, date.fromordinal(today.toordinal() - 1)]
        currency = project["currency"]
        out.append("")
        out.append(f"{project['name']} [{project['project_id']}] ({project['timezone']}, "
                   f"{currency or 'no currency'})")  # fmt: skip
        header = ["", *(f"{'today' if d == today else 'yesterday'} {d.isoformat()}" for d in shown)]
        lines = [
            [label, *(_cell(days.get((project["project_id"], d), {}).get(column), kind, currency)
                      for d in shown)]
            for label, column, kind in _KPI_LINES
        ]  # fmt: skip
        out.extend(_table(header, lines))
        out.append(
            f"  alerts (24 h): {project['payment_failed_24h']} failed payments, "
            f"{project['checkout_started_24h']} checkouts started; "
            f"abandoned checkouts open (48 h): {project['abandoned_open']}; "
            f"recovered revenue (7 d): {_money(project['recovered_revenue_cents_7d'], currency)}"
        )
        out.append(
            f"  workflow runs (7 d): {project['workflow_queued_7d']} queued, "
            f"{project['workflow_running_7d']} running, {project['workflow_succeeded_7d']} "
            f"succeeded, {project['workflow_failed_7d']} failed, {project['stuck_runs']} stuck; "
            f"digests (30 d): {project['digest_sent_30d']} sent, "
            f"{project['digest_failed_30d']} failed"
        )
        received = project["last_event_received_at"]
        out.append(
            "  last event received: "
            + (f"{received:%Y-%m-%d %H:%M} UTC" if received is not None else "never")
        )
    return "\n".join(out)
