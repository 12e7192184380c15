"""Golden cases: hand-written source rows and the exact rows every mart must hold.

The scenario covers a DST day (Europe/Berlin, 2026-03-29 has 23 hours), a +05:45 zone
(Asia/Kathmandu, an event at exactly local midnight), an invalid zone (computed in UTC), a late
event, a duplicate, foreign and unknown currencies, payments 31 minutes and 49 hours after their
checkout, a checkout matched by an e-mail in another letter case, two recovered checkouts sharing
one payment, a pending checkout, and a window re-run after later windows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from runhub_pipeline.assets.marts import (
    MART_MODELS,
    DuckDBEngine,
    refresh_marts,
    refresh_platform_metrics,
    table_rows,
)
from runhub_pipeline.overview import format_overview
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import Warehouse
from tests.factories import (
    analytics_event,
    business_event,
    ingest_and_stage,
    insert_rows,
    project,
    utc,
)

START = utc("2026-03-28 00:00")
T = utc("2026-04-01 00:00")
WRITE_TIME = datetime(2026, 4, 1, 0, 5, tzinfo=UTC)
# Columns that hold the time of the write, not data: never compared.
WRITE_TIME_COLUMNS = {"updated_at", "last_rollup_at"}


def _received(moment: datetime) -> datetime:
    return moment + timedelta(minutes=1)


def _business(
    event_id: int, project_id: str, event_type: str, occurred: str, **extra: Any
) -> dict[str, Any]:
    occurred_at = utc(occurred)
    received_at = extra.pop("received_at", _received(occurred_at))
    return business_event(event_id, project_id, event_type, occurred_at, received_at, **extra)


def _analytics(
    event_id: int, project_id: str, name: str, session: str, occurred: str, anon: str | None
) -> dict[str, Any]:
    occurred_at = utc(occurred)
    return analytics_event(
        event_id, project_id, name, session, occurred_at, _received(occurred_at), anonymous_id=anon
    )


def _run(
    run_id: str, project_id: str, status: str, created: str | None, **extra: Any
) -> dict[str, Any]:
    row = {
        "id": run_id,
        "project_id": project_id,
        "action_id": "recover_abandoned",
        "status": status,
        "idempotency_key": f"idem-{run_id}",
        "params": "{}",
        "attempts": 1,
        "lease_owner": None,
        "lease_expires_at": None,
        "created_at": created,
        "started_at": None,
        "completed_at": None,
        "result": None,
        "error": None,
    }
    row.update(extra)
    return row


def _digest(
    email_id: int, project_id: str, status: str, created: str, locale: str | None, **extra: Any
) -> dict[str, Any]:
    row = {
        "id": email_id,
        "project_id": project_id,
        "template_name": "daily_digest",
        "locale": locale,
        "to_email": f"owner@{project_id}.example.com",
        "subject": "digest",
        "status": status,
        "idempotency_key": f"digest-{email_id}",
        "created_at": created,
        "sent_at": None,
        "error": None,
    }
    row.update(extra)
    return row


def golden_projects() -> list[dict[str, Any]]:
    return [
        project(
            "berlin",
            timezone="Europe/Berlin",
            currency="EUR",
            locale="de-DE",
            tracking_installed=True,
            stripe_connected=True,
            forms_count=0,
        ),
        project(
            "ktm",
            timezone="Asia/Kathmandu",
            currency="USD",
            locale="ar_EG",
            tracking_installed=False,
            stripe_connected=False,
            forms_count=0,
        ),
        project(
            "badtz",
            timezone="Mars/Phobos",
            currency="usd",
            tracking_installed=False,
            stripe_connected=None,
            forms_count=None,
        ),
        project(
            "quiet",
            tracking_installed=False,
            stripe_connected=True,
            forms_count=0,
        ),
    ]


def golden_business_events() -> list[dict[str, Any]]:
    run_1 = json.dumps({"run_id": "run-1"})
    return [
        # berlin: recovered 31 minutes later by a payment matched on e-mail in another case.
        _business(101, "berlin", "checkout_started", "2026-03-28 22:30", session_id="s1",
                  actor_email="Ana@Example.com"),
        _business(103, "berlin", "recovery_email_sent", "2026-03-28 22:45",
                  actor_email="ana@example.com", payload=run_1),
        _business(102, "berlin", "payment_succeeded", "2026-03-28 23:01", session_id="s-other",
                  actor_email="ANA@example.COM", amount_cents=5000, currency="EUR"),
        # berlin: paid 49 hours later on the same session: still abandoned.
        _business(104, "berlin", "checkout_started", "2026-03-29 09:00", session_id="s2",
                  actor_email="bob@example.com"),
        _business(105, "berlin", "payment_succeeded", "2026-03-31 10:00", session_id="s2",
                  amount_cents=7000, currency="EUR"),
        # berlin: converted by a foreign-currency payment; its retry is a duplicate.
        _business(106, "berlin", "checkout_started", "2026-03-29 12:00", session_id="s3"),
        _business(107, "berlin", "payment_failed", "2026-03-29 12:05", session_id="s3",
                  amount_cents=2000, currency="USD"),
        _business(108, "berlin", "payment_succeeded", "2026-03-29 12:10", session_id="s3",
                  amount_cents=2000, currency="USD"),
        _business(110, "berlin", "payment_succeeded", "2026-03-29 12:10", session_id="s3",
                  amount_cents=2000, currency="USD", idempotency_key="key-108",
                  received_at=utc("2026-03-29 12:30")),
        _business(109, "berlin", "refund_issued", "2026-03-30 08:00", amount_cents=1000,
                  currency="EUR"),
        # berlin: a late event, received three days after it happened.
        _business(111, "berlin", "lead_created", "2026-03-28 10:00",
                  received_at=utc("2026-03-31 15:00")),
        # berlin: 23:30 local on the DST day, still 2026-03-29.
        _business(112, "berlin", "form_submitted", "2026-03-29 21:30"),
        # berlin: started 10 minutes before T: pending.
        _business(114, "berlin", "checkout_started", "2026-03-31 23:50", session_id="s5"),
        # ktm: a retried checkout around local midnight, both converted by one payment.
        _business(201, "ktm", "checkout_started", "2026-03-29 18:14", session_id="k1",
                  actor_email="cara@example.com"),
        _business(202, "ktm", "checkout_started", "2026-03-29 18:16", session_id="k1"),
        _business(203, "ktm", "payment_succeeded", "2026-03-29 18:20", session_id="k1",
                  amount_cents=3000, currency="USD"),
        # ktm: two recovered checkouts of one payment: the later one is credited.
        _business(204, "ktm", "checkout_started", "2026-03-30 10:00", session_id="k2",
                  actor_email="dan@example.com"),
        _business(205, "ktm", "checkout_started", "2026-03-30 10:20", session_id="k3",
                  actor_email="Dan@example.com"),
        _business(206, "ktm", "payment_succeeded", "2026-03-30 11:00", session_id="k4",
                  actor_email="dan@example.com", amount_cents=4500, currency="USD"),
        # ktm: abandoned.
        _business(207, "ktm", "checkout_started", "2026-03-31 05:00", session_id="k5"),
        _business(208, "ktm", "payment_failed", "2026-03-31 05:02", session_id="k5",
                  amount_cents=100, currency="USD"),
        # badtz (invalid zone: UTC): an unknown currency and an unknown event type.
        _business(301, "badtz", "payment_succeeded", "2026-03-30 23:30", amount_cents=999,
                  currency="XTS"),
        _business(303, "badtz", "mystery", "2026-03-31 12:00"),
    ]  # fmt: skip


def golden_analytics_events() -> list[dict[str, Any]]:
    return [
        _analytics(1001, "berlin", "session_start", "s1", "2026-03-28 22:20", "v1"),
        _analytics(1002, "berlin", "page_view", "s1", "2026-03-28 23:05", "v1"),
        _analytics(1003, "berlin", "page_view", "s2", "2026-03-29 08:55", "v2"),
        _analytics(1004, "berlin", "page_view", "s3", "2026-03-29 11:58", None),
        _analytics(1005, "berlin", "page_view", "s4", "2026-03-29 22:10", "v1"),
        # 18:15 UTC is exactly midnight in Kathmandu: the next day.
        _analytics(2001, "ktm", "page_view", "k1", "2026-03-29 18:15", "kv1"),
        _analytics(3001, "badtz", "page_view", "x1", "2026-03-30 23:59", None),
    ]


def golden_workflow_runs(garbage_time: str | None = "not a time") -> list[dict[str, Any]]:
    """Runs; PostgreSQL cannot store an unparseable time, so it gets None there."""
    return [
        _run("run-1", "berlin", "succeeded", "2026-03-28T22:40:00Z"),
        _run("run-2", "berlin", "failed", "2026-03-30 00:00:00"),
        _run("run-3", "berlin", "running", "2026-03-31T20:00:00+00:00",
             lease_expires_at="2026-03-31T20:05:00Z"),
        _run("run-4", "berlin", "queued", "2026-03-20T00:00:00Z"),
        _run("run-5", "berlin", "running", "2026-03-10T00:00:00Z",
             lease_expires_at="2026-03-11T00:00:00Z"),
        _run("run-6", "ktm", "succeeded", "2026-03-31T10:00:00Z"),
        _run("run-7", "ktm", "queued", garbage_time),
    ]  # fmt: skip


def golden_emails() -> list[dict[str, Any]]:
    return [
        _digest(1, "berlin", "sent", "2026-03-30T06:00:00Z", "de-DE"),
        _digest(2, "berlin", "bounced", "2026-03-31T06:00:00Z", "de_DE"),
        _digest(3, "berlin", "queued", "2026-03-31T07:00:00Z", "de"),
        _digest(4, "berlin", "sent", "2026-02-20T06:00:00Z", "de"),
        _digest(5, "berlin", "sent", "2026-03-31T06:00:00Z", "de", template_name="notification"),
        _digest(6, "ktm", "failed", "2026-03-30T06:00:00Z", "AR-eg"),
        _digest(7, "ktm", "sent", "2026-03-31T06:00:00Z", None),
        _digest(8, "ktm", "sent", "2026-03-31T06:00:00+00:00", "pt-BR"),
    ]


def load_golden_scenario(app_db: AppDatabase) -> None:
    insert_rows(app_db, "projects", golden_projects())
    insert_rows(app_db, "business_events", golden_business_events())
    insert_rows(app_db, "inhouse_analytics_events", golden_analytics_events())
    garbage_time = "not a time" if app_db.dialect == "sqlite" else None
    insert_rows(app_db, "workflow_runs", golden_workflow_runs(garbage_time))
    insert_rows(app_db, "inhouse_emails", golden_emails())


def build_marts(warehouse: Warehouse, write_time: datetime = WRITE_TIME) -> None:
    with warehouse.writer() as connection:
        refresh_marts(DuckDBEngine(connection), write_time)


def run_windows(
    app_db: AppDatabase, warehouse: Warehouse, start: datetime, end: datetime, step: timedelta
) -> None:
    """Ingest, stage and refresh the marts window range by window range."""
    moment = start
    while moment < end:
        upper = min(moment + step, end)
        ingest_and_stage(app_db, warehouse, moment, upper)
        build_marts(warehouse)
        moment = upper


def mart_contents(connection: duckdb.DuckDBPyConnection, table: str) -> list[dict[str, Any]]:
    """A table's rows in key order, without the write-time columns."""
    columns, rows = table_rows(connection, table)
    return [
        {c: v for c, v in zip(columns, row, strict=True) if c not in WRITE_TIME_COLUMNS}
        for row in rows
    ]


def all_mart_contents(warehouse: Warehouse) -> dict[str, list[dict[str, Any]]]:
    with warehouse.reader() as connection:
        return {table: mart_contents(connection, table) for table in MART_MODELS}


def d(text: str) -> date:
    return date.fromisoformat(text)


_KPI_ZERO = {
    "sessions": 0,
    "visitors": 0,
    "page_views": 0,
    "form_submissions": 0,
    "leads": 0,
    "checkouts_started": 0,
    "payments_failed": 0,
    "orders": 0,
    "revenue_cents": 0,
    "refunds": 0,
    "refunded_cents": 0,
    "net_revenue_cents": 0,
    "conversion_rate": None,
    "abandoned_checkouts": 0,
    "recovered_checkouts": 0,
    "recovered_revenue_cents": 0,
    "workflow_emails_sent": 0,
}


def kpi(project_id: str, day: str, currency: str, **values: Any) -> dict[str, Any]:
    return {"project_id": project_id, "day": d(day), **_KPI_ZERO, **values, "currency": currency}


def checkout(
    checkout_event_id: int,
    project_id: str,
    session_id: str | None,
    email_norm: str | None,
    started_at: str,
    status: str,
    paid_at: str | None = None,
    amount: int | None = None,
    currency: str | None = None,
    credited: int = 0,
    run_id: str | None = None,
) -> dict[str, Any]:
    return {
        "checkout_event_id": checkout_event_id,
        "project_id": project_id,
        "session_id": session_id,
        "email_norm": email_norm,
        "started_at": utc(started_at),
        "status": status,
        "paid_at": utc(paid_at) if paid_at else None,
        "payment_amount_cents": amount,
        "payment_currency": currency,
        "credited_revenue_cents": credited,
        "recovered_by_run_id": run_id,
    }


EXPECTED_FCT_CHECKOUTS = [
    checkout(101, "berlin", "s1", "ana@example.com", "2026-03-28 22:30", "recovered",
             "2026-03-28 23:01", 5000, "EUR", credited=5000, run_id="run-1"),
    checkout(104, "berlin", "s2", "bob@example.com", "2026-03-29 09:00", "abandoned",
             "2026-03-31 10:00", 7000, "EUR"),
    checkout(106, "berlin", "s3", None, "2026-03-29 12:00", "converted",
             "2026-03-29 12:10", 2000, "USD"),
    checkout(114, "berlin", "s5", None, "2026-03-31 23:50", "pending"),
    checkout(201, "ktm", "k1", "cara@example.com", "2026-03-29 18:14", "converted",
             "2026-03-29 18:20", 3000, "USD"),
    checkout(202, "ktm", "k1", None, "2026-03-29 18:16", "converted",
             "2026-03-29 18:20", 3000, "USD"),
    checkout(204, "ktm", "k2", "dan@example.com", "2026-03-30 10:00", "recovered",
             "2026-03-30 11:00", 4500, "USD"),
    checkout(205, "ktm", "k3", "dan@example.com", "2026-03-30 10:20", "recovered",
             "2026-03-30 11:00", 4500, "USD", credited=4500),
    checkout(207, "ktm", "k5", None, "2026-03-31 05:00", "abandoned"),
]  # fmt: skip

EXPECTED_BUSINESS_KPI_DAILY = [
    kpi("badtz", "2026-03-30", "USD", sessions=1, page_views=1, orders=1, conversion_rate=1.0),
    kpi("badtz", "2026-03-31", "USD"),
    kpi("berlin", "2026-03-28", "EUR", sessions=1, visitors=1, leads=1, checkouts_started=1,
        conversion_rate=0.0, abandoned_checkouts=1, recovered_checkouts=1,
        recovered_revenue_cents=5000, workflow_emails_sent=1),
    kpi("berlin", "2026-03-29", "EUR", sessions=3, visitors=2, page_views=3, form_submissions=1,
        checkouts_started=2, payments_failed=1, orders=2, revenue_cents=5000,
        net_revenue_cents=5000, conversion_rate=2 / 3, abandoned_checkouts=1),
    kpi("berlin", "2026-03-30", "EUR", sessions=1, visitors=1, page_views=1, refunds=1,
        refunded_cents=1000, net_revenue_cents=-1000, conversion_rate=0.0),
    kpi("berlin", "2026-03-31", "EUR", orders=1, revenue_cents=7000, net_revenue_cents=7000),
    kpi("berlin", "2026-04-01", "EUR", checkouts_started=1),
    kpi("ktm", "2026-03-29", "USD", checkouts_started=1),
    kpi("ktm", "2026-03-30", "USD", sessions=1, visitors=1, page_views=1, checkouts_started=3,
        orders=2, revenue_cents=7500, net_revenue_cents=7500, conversion_rate=2.0,
        abandoned_checkouts=2, recovered_checkouts=2, recovered_revenue_cents=4500),
    kpi("ktm", "2026-03-31", "USD", checkouts_started=1, payments_failed=1,
        abandoned_checkouts=1),
]  # fmt: skip


def revenue(
    project_id: str, day: str, currency: str, orders: int, cents: int, refunds: int, refunded: int
) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "day": d(day),
        "currency": currency,
        "orders": orders,
        "revenue_cents": cents,
        "refunds": refunds,
        "refunded_cents": refunded,
    }


EXPECTED_REVENUE_BY_CURRENCY_DAILY = [
    revenue("badtz", "2026-03-30", "XTS", 1, 999, 0, 0),
    revenue("berlin", "2026-03-29", "EUR", 1, 5000, 0, 0),
    revenue("berlin", "2026-03-29", "USD", 1, 2000, 0, 0),
    revenue("berlin", "2026-03-30", "EUR", 0, 0, 1, 1000),
    revenue("berlin", "2026-03-31", "EUR", 1, 7000, 0, 0),
    revenue("ktm", "2026-03-30", "USD", 2, 7500, 0, 0),
]


def alert(
    project_id: str, bucket: str, payment_failed: int, checkout_started: int, abandoned: int
) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "bucket_start": utc(bucket),
        "payment_failed": payment_failed,
        "checkout_started": checkout_started,
        "abandoned_checkouts": abandoned,
    }


EXPECTED_ALERT_COUNTS_15MIN = [
    alert("berlin", "2026-03-28 22:30", 0, 1, 1),
    alert("berlin", "2026-03-29 09:00", 0, 1, 1),
    alert("berlin", "2026-03-29 12:00", 1, 1, 0),
    alert("berlin", "2026-03-31 23:45", 0, 1, 0),
    alert("ktm", "2026-03-29 18:00", 0, 1, 0),
    alert("ktm", "2026-03-29 18:15", 0, 1, 0),
    alert("ktm", "2026-03-30 10:00", 0, 1, 1),
    alert("ktm", "2026-03-30 10:15", 0, 1, 1),
    alert("ktm", "2026-03-31 05:00", 1, 1, 1),
]

EXPECTED_DIGEST_METRICS = [
    {"project_id": "berlin", "locale": "de", "status": "bounced", "emails": 1,
     "delivery_rate": 0.5},
    {"project_id": "berlin", "locale": "de", "status": "queued", "emails": 1,
     "delivery_rate": 0.5},
    {"project_id": "berlin", "locale": "de", "status": "sent", "emails": 1, "delivery_rate": 0.5},
    {"project_id": "ktm", "locale": "ar", "status": "failed", "emails": 1, "delivery_rate": 0.0},
    {"project_id": "ktm", "locale": "en", "status": "sent", "emails": 2, "delivery_rate": 1.0},
]  # fmt: skip


def runs(project_id: str, queued: int, running: int, ok: int, failed: int, stuck: int) -> dict:
    return {
        "project_id": project_id,
        "queued": queued,
        "running": running,
        "succeeded": ok,
        "failed": failed,
        "stuck_runs": stuck,
    }


EXPECTED_WORKFLOW_RUN_METRICS = [
    runs("badtz", 0, 0, 0, 0, 0),
    runs("berlin", 0, 1, 1, 1, 2),
    runs("ktm", 0, 0, 1, 0, 0),
    runs("quiet", 0, 0, 0, 0, 0),
]


def overview(project_id: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "project_id": project_id,
        "as_of": T,
        "payment_failed_24h": 0,
        "checkout_started_24h": 0,
        "abandoned_open": 0,
        "recovered_revenue_cents_7d": 0,
        "workflow_queued_7d": 0,
        "workflow_running_7d": 0,
        "workflow_succeeded_7d": 0,
        "workflow_failed_7d": 0,
        "stuck_runs": 0,
        "digest_sent_30d": 0,
        "digest_failed_30d": 0,
        "last_event_received_at": None,
        "tracking_connected": False,
        "payments_connected": False,
        "forms_connected": False,
    }
    row.update(values)
    return row


EXPECTED_RUN_OVERVIEW = [
    overview("badtz", last_event_received_at=utc("2026-03-31 12:01"), tracking_connected=True),
    overview("berlin", checkout_started_24h=1, recovered_revenue_cents_7d=5000,
             workflow_running_7d=1, workflow_succeeded_7d=1, workflow_failed_7d=1, stuck_runs=2,
             digest_sent_30d=1, digest_failed_30d=1,
             last_event_received_at=utc("2026-03-31 23:51"), tracking_connected=True,
             payments_connected=True, forms_connected=True),
    overview("ktm", payment_failed_24h=1, checkout_started_24h=1, abandoned_open=1,
             recovered_revenue_cents_7d=4500, workflow_succeeded_7d=1, digest_sent_30d=2,
             digest_failed_30d=1, last_event_received_at=utc("2026-03-31 05:03"),
             tracking_connected=True),
    overview("quiet", payments_connected=True),
]  # fmt: skip

EXPECTED = {
    "fct_checkouts": EXPECTED_FCT_CHECKOUTS,
    "business_kpi_daily": EXPECTED_BUSINESS_KPI_DAILY,
    "revenue_by_currency_daily": EXPECTED_REVENUE_BY_CURRENCY_DAILY,
    "alert_counts_15min": EXPECTED_ALERT_COUNTS_15MIN,
    "digest_metrics": EXPECTED_DIGEST_METRICS,
    "workflow_run_metrics": EXPECTED_WORKFLOW_RUN_METRICS,
    "run_overview": EXPECTED_RUN_OVERVIEW,
}


def rounded(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with floats rounded, so that 2 / 3 compares equal whatever the engine."""
    return [
        {k: round(v, 12) if isinstance(v, float) else v for k, v in row.items()} for row in rows
    ]


def assert_golden(contents: dict[str, list[dict[str, Any]]]) -> None:
    for table, expected in EXPECTED.items():
        assert rounded(contents[table]) == rounded(expected), table


def _from_scratch(app_db: AppDatabase, warehouse: Warehouse) -> None:
    ingest_and_stage(app_db, warehouse, START, T)
    build_marts(warehouse)


def _day_by_day(app_db: AppDatabase, warehouse: Warehouse) -> None:
    run_windows(app_db, warehouse, START, T, timedelta(days=1))


def _hourly_then_rerun(app_db: AppDatabase, warehouse: Warehouse) -> None:
    run_windows(app_db, warehouse, START, T, timedelta(hours=5))
    # A window re-run after later ones: T does not move, nothing changes.
    old = utc("2026-03-29 12:00")
    ingest_and_stage(app_db, warehouse, old, old + timedelta(minutes=15))
    build_marts(warehouse)


@pytest.mark.parametrize(
    "build",
    [_from_scratch, _day_by_day, _hourly_then_rerun],
    ids=["from_scratch", "day_by_day", "five_hourly_then_rerun"],
)
def test_golden_rows(
    sqlite_app_db: AppDatabase,
    tmp_path: Path,
    build: Callable[[AppDatabase, Warehouse], None],
) -> None:
    load_golden_scenario(sqlite_app_db)
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    build(sqlite_app_db, warehouse)
    assert_golden(all_mart_contents(warehouse))


def test_golden_kpi_updated_at_is_the_write_time(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    load_golden_scenario(sqlite_app_db)
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    _from_scratch(sqlite_app_db, warehouse)
    with warehouse.reader() as connection:
        stamps = connection.execute(
            "select distinct updated_at from business_kpi_daily"
            " union select distinct last_rollup_at from run_overview"
            " where last_rollup_at is not null"
        ).fetchall()
    assert stamps == [(WRITE_TIME,)]


def platform_row(warehouse: Warehouse, published_through: datetime | None) -> dict[str, Any]:
    with warehouse.writer() as connection:
        refresh_platform_metrics(DuckDBEngine(connection), published_through, WRITE_TIME)
        columns, rows = table_rows(connection, "platform_success_metrics")
    assert len(rows) == 1
    return {c: v for c, v in zip(columns, rows[0], strict=True) if c != "updated_at"}


def test_golden_platform_success_metrics(sqlite_app_db: AppDatabase, tmp_path: Path) -> None:
    load_golden_scenario(sqlite_app_db)
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    _from_scratch(sqlite_app_db, warehouse)
    expected = {
        "as_of": T,
        "digest_delivery_rate_30d": 3 / 5,
        "digest_delivery_rate_30d_target": 0.95,
        "workflow_completion_rate_7d": 2 / 3,
        "workflow_completion_rate_7d_target": 0.80,
        # quiet is connected (payments) with no event in 7 days; the three others are not empty.
        "empty_state_rate": 1 / 4,
        "empty_state_rate_target": 0.20,
        "fresh_share": 0.0,
        "fresh_share_target": 0.95,
        "connected_projects": 4,
        "active_projects_24h": 3,
    }
    # Nothing published yet: none of the three projects with events in 24 h is fresh.
    assert rounded([platform_row(warehouse, None)]) == rounded([expected])
    # Published through the newest change: all fresh; the re-run at the same T replaces the row.
    fresh = {**expected, "fresh_share": 1.0}
    assert rounded([platform_row(warehouse, WRITE_TIME)]) == rounded([fresh])


def _rows(rows: Sequence[dict[str, Any]], key: str, value: Any) -> list[dict[str, Any]]:
    return [row for row in rows if row[key] == value]


def test_golden_dst_day_has_23_hours(sqlite_app_db: AppDatabase, tmp_path: Path) -> None:
    """An event at 21:30 UTC on 2026-03-29 is 23:30 in Berlin (CEST): still that day."""
    load_golden_scenario(sqlite_app_db)
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    _from_scratch(sqlite_app_db, warehouse)
    rows = all_mart_contents(warehouse)["business_kpi_daily"]
    dst_day = _rows(_rows(rows, "project_id", "berlin"), "day", d("2026-03-29"))
    assert dst_day[0]["form_submissions"] == 1


def test_overview_shows_local_today_and_yesterday(
    sqlite_app_db: AppDatabase, tmp_path: Path
) -> None:
    load_golden_scenario(sqlite_app_db)
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    _from_scratch(sqlite_app_db, warehouse)
    with warehouse.reader() as connection:
        text = format_overview(connection)
        today_only = format_overview(connection, today_only=True)
    assert text.startswith("Run Hub overview as of 2026-04-01 00:00 UTC (4 projects)")
    berlin = text.split("[berlin]")[1].split("\n\n")[0]
    assert "today 2026-04-01  yesterday 2026-03-31" in berlin
    assert "70.00 EUR" in berlin  # yesterday's revenue (payment 105)
    assert "abandoned checkouts open (48 h): 0" in berlin
    ktm = text.split("[ktm]")[1].split("\n\n")[0]
    assert "1 failed payments, 1 checkouts started" in ktm
    assert "yesterday" not in today_only
