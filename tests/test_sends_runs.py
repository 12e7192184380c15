"""Workflow runs (issue 5 item 2 and Bad input): policy, exactly-once sends, outcome events,
reaper, retention, SMTP failure and retry. Real SQLite and PostgreSQL (the `app_db` fixture), a
real DuckDB warehouse snapshot, the real file outbox and a real SMTP listener.

The helpers at the top build hand-written warehouse rows with the contract's columns; the other
send tests import them.
"""

import email
import email.policy
import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from runhub_pipeline.assets.ingest import ensure_warehouse_schema
from runhub_pipeline.lineage import model_table_schema
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.email import FileOutboxTransport, SmtpTransport
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.sends.lifecycle import LeaseLostError, StartedRun, heartbeat, start_run
from runhub_pipeline.sends.policy import HEARTBEAT_EVERY, LEASE_DURATION, RECIPIENT_CAP
from runhub_pipeline.sends.reaper import prune_sends, reap_expired_leases
from runhub_pipeline.sends.runs import execute_run
from runhub_pipeline.sends.stored import parse_time
from runhub_pipeline.settings import Settings
from tests.factories import FIXED_NOW, business_event, insert_rows, project, stored
from tests.smtp_server import SmtpServer, free_port

NOW = FIXED_NOW  # 2026-03-30 12:00 UTC, the wall clock of every send test
WATERMARK = NOW - timedelta(minutes=15)

# --- helpers shared by the send tests ----------------------------------------------------------


@pytest.fixture(autouse=True)
def release_connections(request: pytest.FixtureRequest) -> Iterator[None]:
    """Close a test's pooled PostgreSQL connections when it ends: every test has its own
    database, and idle pools of finished tests would exhaust the server's max_connections."""
    app_db = request.getfixturevalue("app_db") if "app_db" in request.fixturenames else None
    yield
    if app_db is not None and app_db.dialect == "postgresql":
        app_db.engine.dispose()


_WAREHOUSE_TABLES = """
create table if not exists fct_checkouts (
    checkout_event_id bigint not null, project_id varchar not null, session_id varchar,
    email_norm varchar, started_at timestamptz not null, status varchar not null,
    paid_at timestamptz, payment_amount_cents bigint, payment_currency varchar,
    credited_revenue_cents bigint not null, recovered_by_run_id varchar
);
create table if not exists business_kpi_daily (
    project_id varchar not null, day date not null, sessions bigint not null,
    visitors bigint not null, page_views bigint not null, form_submissions bigint not null,
    leads bigint not null, checkouts_started bigint not null, payments_failed bigint not null,
    orders bigint not null, revenue_cents bigint not null, refunds bigint not null,
    refunded_cents bigint not null, net_revenue_cents bigint not null, conversion_rate double,
    abandoned_checkouts bigint not null, recovered_checkouts bigint not null,
    recovered_revenue_cents bigint not null, workflow_emails_sent bigint not null,
    currency varchar, updated_at timestamptz not null
);
create table if not exists alert_counts_15min (
    project_id varchar not null, bucket_start timestamptz not null,
    payment_failed bigint not null, checkout_started bigint not null,
    abandoned_checkouts bigint not null
)
"""
# Every count and amount of a business_kpi_daily row, zero; read from the model.
KPI_ZEROS: dict[str, Any] = {
    column.name: 0
    for column in model_table_schema("business_kpi_daily").columns
    if column.type == "bigint"
}


def staged(
    event_id: int,
    project_id: str,
    event_type: str,
    occurred_at: datetime,
    email_norm: str | None = None,
    session_id: str | None = None,
    received_at: datetime | None = None,
) -> dict[str, Any]:
    """A stg_business_events row."""
    return {
        "event_id": event_id,
        "project_id": project_id,
        "event_type": event_type,
        "occurred_at": occurred_at,
        "received_at": received_at or occurred_at,
        "email_norm": email_norm,
        "session_id": session_id,
    }


def checkout(
    event_id: int,
    project_id: str,
    email_norm: str | None,
    started_at: datetime,
    status: str = "abandoned",
    session_id: str | None = None,
) -> dict[str, Any]:
    """A fct_checkouts row."""
    return {
        "checkout_event_id": event_id,
        "project_id": project_id,
        "email_norm": email_norm,
        "started_at": started_at,
        "status": status,
        "session_id": session_id,
    }


def build_warehouse(
    path: Path,
    *,
    watermark: datetime = WATERMARK,
    events: Sequence[Mapping[str, Any]] = (),
    checkouts: Sequence[Mapping[str, Any]] = (),
    kpis: Sequence[Mapping[str, Any]] = (),
    alerts: Sequence[Mapping[str, Any]] = (),
) -> Warehouse:
    """(Re)publish a warehouse snapshot holding exactly these rows, watermark T = `watermark`.

    Every checkout also gets its staged `checkout_started` event unless one is given.
    """
    warehouse = Warehouse(path=str(path))
    event_ids = {event["event_id"] for event in events}
    all_events = [
        *events,
        *(
            staged(
                c["checkout_event_id"],
                c["project_id"],
                "checkout_started",
                c["started_at"],
                c["email_norm"],
                c.get("session_id"),
            )
            for c in checkouts
            if c["checkout_event_id"] not in event_ids
        ),
    ]
    with warehouse.writer() as connection:
        ensure_warehouse_schema(connection)
        for statement in _WAREHOUSE_TABLES.split(";"):
            connection.execute(statement)
        for table in (
            "stg_business_events",
            "fct_checkouts",
            "business_kpi_daily",
            "alert_counts_15min",
            "ingest_ledger",
        ):
            connection.execute(f"delete from {table}")
        for event in all_events:
            connection.execute(
                "insert into stg_business_events (event_id, ingest_window_start, received_at,"
                " project_id, event_type, occurred_at, email_norm, session_id)"
                " values ($id, $received, $received, $project, $type, $occurred, $email, $session)",
                {
                    "id": event["event_id"],
                    "received": event["received_at"],
                    "project": event["project_id"],
                    "type": event["event_type"],
                    "occurred": event["occurred_at"],
                    "email": event["email_norm"],
                    "session": event["session_id"],
                },
            )
        for row in checkouts:
            connection.execute(
                "insert into fct_checkouts (checkout_event_id, project_id, session_id, email_norm,"
                " started_at, status, credited_revenue_cents)"
                " values ($id, $project, $session, $email, $started, $status, 0)",
                {
                    "id": row["checkout_event_id"],
                    "project": row["project_id"],
                    "session": row.get("session_id"),
                    "email": row["email_norm"],
                    "started": row["started_at"],
                    "status": row["status"],
                },
            )
        for kpi in kpis:
            values = {**KPI_ZEROS, "conversion_rate": None, "currency": "USD", **kpi}
            values["updated_at"] = watermark
            columns = list(values)
            connection.execute(
                f"insert into business_kpi_daily ({', '.join(columns)})"
                f" values ({', '.join('$' + c for c in columns)})",
                values,
            )
        for alert in alerts:
            values = {"payment_failed": 0, "checkout_started": 0, "abandoned_checkouts": 0}
            values.update(alert)
            columns = list(values)
            connection.execute(
                f"insert into alert_counts_15min ({', '.join(columns)})"
                f" values ({', '.join('$' + c for c in columns)})",
                values,
            )
        connection.execute(
            "insert into ingest_ledger values ('business_events', $w, 0, 0, 0, 0, $t, $t)",
            {"w": watermark - timedelta(minutes=15), "t": watermark},
        )
    return warehouse


def settings_for(app_db: AppDatabase, home: Path) -> Settings:
    return Settings.from_env({"RUNHUB_HOME": str(home), "RUNHUB_APP_DB_URL": app_db.url})


def outbox(tmp_path: Path) -> FileOutboxTransport:
    return FileOutboxTransport(directory=str(tmp_path / "outbox"))


def read_messages(directory: Path) -> list[EmailMessage]:
    return [
        email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        for path in sorted(directory.glob("*.eml"))
    ]


def outbox_recipients(directory: Path) -> Counter[str]:
    return Counter(str(message["To"]) for message in read_messages(directory))


def queue_run(
    app_db: AppDatabase,
    run_id: str,
    project_id: str,
    action_id: str,
    params: object = None,
    created_at: datetime = NOW,
    status: str = "queued",
    attempts: int = 0,
) -> None:
    """A workflow run as the app inserts it."""
    insert_rows(
        app_db,
        "workflow_runs",
        [
            {
                "id": run_id,
                "project_id": project_id,
                "action_id": action_id,
                "status": status,
                "idempotency_key": f"app:{run_id}",
                "params": params
                if params is None or isinstance(params, str)
                else json.dumps(params),
                "attempts": attempts,
                "created_at": created_at,
            }
        ],
    )


def run_row(app_db: AppDatabase, run_id: str) -> sa.Row[Any]:
    rows = app_db.fetch_all("select * from workflow_runs where id = :id", {"id": run_id})
    assert len(rows) == 1
    return rows[0]


def result_of(app_db: AppDatabase, run_id: str) -> dict[str, Any]:
    value = run_row(app_db, run_id).result
    return value if isinstance(value, dict) else json.loads(value)


def sends_of(app_db: AppDatabase, run_id: str) -> dict[str, tuple[str, str | None]]:
    rows = app_db.fetch_all(
        "select email, status, error from workflow_sends where run_id = :r", {"r": run_id}
    )
    return {row.email: (row.status, row.error) for row in rows}


def outcome_events(app_db: AppDatabase) -> list[sa.Row[Any]]:
    return app_db.fetch_all(
        "select project_id, event_type, actor_email, idempotency_key, payload, occurred_at"
        " from business_events where event_type like '%_email_sent' order by id"
    )


# --- the recovery scenario ------------------------------------------------------------------


def seed_recovery(app_db: AppDatabase, tmp_path: Path) -> Warehouse:
    """p1 and p2 share customer addresses. p1's abandoned checkouts in the last 24 hours:
    a (mailable), b (paid since, per the app database), s (suppressed), r (e-mailed by another
    run 2 hours ago), `a,b@x.com` (an address a mail header cannot carry); c is too old and d is
    still pending. p2 has its own checkout of a and suppresses it."""
    insert_rows(
        app_db,
        "projects",
        [project("p1", auto_recover_abandoned=True, locale="fr-CA"), project("p2")],
    )
    insert_rows(
        app_db,
        "inhouse_email_suppressions",
        [
            {"project_id": "p1", "email": "S@x.com ", "reason": "unsubscribed", "created_at": NOW},
            {"project_id": "p2", "email": "a@x.com", "reason": "bounced", "created_at": NOW},
        ],
    )
    insert_rows(
        app_db,
        "workflow_sends",
        [
            {
                "project_id": "p1",
                "run_id": "older-run",
                "action_id": "send_promo",
                "email": "r@x.com",
                "status": "sent",
                "idempotency_key": "workflow:older-run:r@x.com",
                "created_at": NOW - timedelta(hours=2),
            }
        ],
    )
    insert_rows(
        app_db,
        "business_events",
        [
            business_event(
                9001,
                " p1",
                "Payment_Succeeded",
                NOW - timedelta(minutes=10),
                NOW - timedelta(minutes=9),
                actor_email=" B@x.com",
                amount_cents=1200,
                currency="USD",
            )
        ],
    )
    return build_warehouse(
        tmp_path / "warehouse.duckdb",
        checkouts=[
            checkout(1, "p1", "a@x.com", NOW - timedelta(hours=2), session_id="s-a"),
            checkout(2, "p1", "b@x.com", NOW - timedelta(hours=3)),
            checkout(3, "p1", "s@x.com", NOW - timedelta(hours=4)),
            checkout(4, "p1", "r@x.com", NOW - timedelta(hours=5)),
            checkout(5, "p1", "a,b@x.com", NOW - timedelta(hours=6)),
            checkout(6, "p1", "c@x.com", NOW - timedelta(hours=25)),
            checkout(7, "p1", "d@x.com", NOW - timedelta(minutes=10), status="pending"),
            checkout(8, "p1", "e@x.com", NOW - timedelta(hours=7), status="recovered"),
            checkout(11, "p2", "a@x.com", NOW - timedelta(hours=2)),
            checkout(12, "p2", "z@x.com", NOW - timedelta(hours=2)),
        ],
    )


def test_recovery_run_applies_the_policy_and_records_outcomes(
    app_db: AppDatabase, tmp_path: Path
) -> None:
    warehouse = seed_recovery(app_db, tmp_path)
    settings = settings_for(app_db, tmp_path)
    queue_run(app_db, "run-1", "p1", "recover_abandoned")

    report = execute_run(app_db, warehouse, outbox(tmp_path), settings, "run-1", NOW)

    assert report.status == "succeeded" and report.sent_now == 1
    assert (report.action, report.locale) == ("recover_abandoned", "fr")
    assert outbox_recipients(tmp_path / "outbox") == Counter({"a@x.com": 1})
    result = result_of(app_db, "run-1")
    assert result["sent"] == 1 and result["failed"] == 0
    assert result["skipped"] == {
        "invalid_address": 1,
        "paid": 1,
        "recently_emailed": 1,
        "suppressed": 1,
    }
    assert result["recipients"] == 5 and sum(result["skipped"].values()) == 4
    assert result["as_of"] == WATERMARK.isoformat()
    assert sends_of(app_db, "run-1") == {"a@x.com": ("sent", None)}
    row = run_row(app_db, "run-1")
    assert row.status == "succeeded" and row.attempts == 1 and row.error is None
    assert row.lease_expires_at is None
    [event] = outcome_events(app_db)
    assert (event.project_id, event.event_type, event.actor_email) == (
        "p1",
        "recovery_email_sent",
        "a@x.com",
    )
    assert event.idempotency_key == "workflow:run-1:a@x.com:sent"
    payload = event.payload if isinstance(event.payload, dict) else json.loads(event.payload)
    assert payload == {"run_id": "run-1"}
    [message] = read_messages(tmp_path / "outbox")
    assert message["List-Unsubscribe"].startswith("<http://localhost:8080/unsubscribe?")
    assert message["X-Runhub-Run-Id"] == "run-1"
    assert message["Content-Language"] is None or "fr" in message["Content-Language"]


def test_a_repeat_or_retry_of_a_run_sends_nothing_twice(
    app_db: AppDatabase, tmp_path: Path
) -> None:
    warehouse = seed_recovery(app_db, tmp_path)
    settings = settings_for(app_db, tmp_path)
    queue_run(app_db, "run-1", "p1", "recover_abandoned")
    execute_run(app_db, warehouse, outbox(tmp_path), settings, "run-1", NOW)

    again = execute_run(app_db, warehouse, outbox(tmp_path), settings, "run-1", NOW)
    assert again.status is None and "is succeeded, not queued" in again.note

    # A retry of the same run (as the reaper re-queues it) finds its claims and skips them.
    app_db.execute("update workflow_runs set status = 'queued' where id = 'run-1'")
    retry = execute_run(app_db, warehouse, outbox(tmp_path), settings, "run-1", NOW)
    assert retry.status == "succeeded" and retry.sent_now == 0
    assert run_row(app_db, "run-1").attempts == 2
    assert result_of(app_db, "run-1")["sent"] == 1
    assert outbox_recipients(tmp_path / "outbox") == Counter({"a@x.com": 1})
    assert len(outcome_events(app_db)) == 1


def test_recipients_never_cross_projects(app_db: AppDatabase, tmp_path: Path) -> None:
    """p1 and p2 share a@x.com: p2 suppressed it, p1 did not; p1's send puts no cooldown on p2's
    other customers and p2 only mails its own checkouts."""
    warehouse = seed_recovery(app_db, tmp_path)
    settings = settings_for(app_db, tmp_path)
    queue_run(app_db, "run-1", "p1", "recover_abandoned")
    queue_run(app_db, "run-2", "p2", "recover_abandoned")
    execute_run(app_db, warehouse, outbox(tmp_path), settings, "run-1", NOW)
    report = execute_run(app_db, warehouse, outbox(tmp_path), settings, "run-2", NOW)

    assert sends_of(app_db, "run-2") == {"z@x.com": ("sent", None)}
    assert result_of(app_db, "run-2")["skipped"] == {"suppressed": 1}
    assert report.locale == "en"
    assert outbox_recipients(tmp_path / "outbox") == Counter({"a@x.com": 1, "z@x.com": 1})
    assert {(e.project_id, e.actor_email) for e in outcome_events(app_db)} == {
        ("p1", "a@x.com"),
        ("p2", "z@x.com"),
    }


def seed_leads(app_db: AppDatabase, tmp_path: Path) -> Warehouse:
    """Leads and payments of p1 and p2 for the promo and onboarding audiences."""
    insert_rows(app_db, "projects", [project("p1"), project("p2", locale="de")])
    day = timedelta(days=1)
    events = [
        staged(1, "p1", "lead_created", NOW - 2 * day, "lead@x.com"),
        staged(2, "p1", "lead_created", NOW - 3 * day, "buyer@x.com"),
        staged(3, "p1", "payment_succeeded", NOW - 1 * day, "buyer@x.com"),
        staged(4, "p1", "lead_created", NOW - 8 * day, "oldlead@x.com"),
        staged(5, "p1", "payment_succeeded", NOW - 89 * day, "customer@x.com"),
        staged(6, "p1", "payment_succeeded", NOW - 91 * day, "lapsed@x.com"),
        staged(7, "p1", "form_submitted", NOW - 1 * day, "form@x.com"),
        staged(8, "p2", "lead_created", NOW - 1 * day, "p2only@x.com"),
        staged(9, "p2", "lead_created", NOW - 1 * day, "lead@x.com"),
    ]
    return build_warehouse(tmp_path / "warehouse.duckdb", events=events)


def test_promo_and_onboarding_audiences(app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = seed_leads(app_db, tmp_path)
    settings = settings_for(app_db, tmp_path)
    queue_run(app_db, "promo", "p1", "send_promo", {"title": "Spring sale", "body": "20% off"})
    queue_run(app_db, "onboard", "p1", "onboard_users", {"locale": "es-MX"})

    promo = execute_run(app_db, warehouse, outbox(tmp_path), settings, "promo", NOW)
    assert set(sends_of(app_db, "promo")) == {
        "customer@x.com",
        "buyer@x.com",
        "lead@x.com",
        "oldlead@x.com",
    }
    assert promo.sent_now == 4
    subjects = {str(m["Subject"]) for m in read_messages(tmp_path / "outbox")}
    assert subjects == {"Spring sale"}

    # Everyone promo just mailed is in the 24-hour cooldown, whatever the action.
    onboard = execute_run(app_db, warehouse, outbox(tmp_path), settings, "onboard", NOW)
    assert onboard.locale == "es" and onboard.sent_now == 0
    assert result_of(app_db, "onboard")["skipped"] == {"recently_emailed": 1}
    tomorrow = NOW + timedelta(days=1, minutes=1)
    queue_run(app_db, "onboard-2", "p1", "onboard_users", created_at=tomorrow)
    later = execute_run(app_db, warehouse, outbox(tmp_path), settings, "onboard-2", tomorrow)
    # lead@x.com is a lead of the last 7 days without a payment; buyer paid, oldlead is 9 days old.
    assert set(sends_of(app_db, "onboard-2")) == {"lead@x.com"}
    assert later.sent_now == 1
    assert {e.event_type for e in outcome_events(app_db)} == {
        "promo_email_sent",
        "onboarding_email_sent",
    }


def test_post_update_is_a_promo_run_with_is_update(app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = seed_leads(app_db, tmp_path)
    queue_run(app_db, "upd", "p2", "send_promo", {"isUpdate": True})
    report = execute_run(
        app_db, warehouse, outbox(tmp_path), settings_for(app_db, tmp_path), "upd", NOW
    )
    assert (report.action, report.locale, report.sent_now) == ("post_update", "de", 2)
    assert result_of(app_db, "upd")["action"] == "post_update"
    assert {e.event_type for e in outcome_events(app_db)} == {"promo_email_sent"}


def test_named_addresses_must_be_the_projects_own(app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = seed_leads(app_db, tmp_path)
    emails = ["LEAD@x.com", "p2only@x.com", "not-an-address", "form@x.com"]
    queue_run(app_db, "named", "p1", "send_promo", {"emails": emails})
    execute_run(app_db, warehouse, outbox(tmp_path), settings_for(app_db, tmp_path), "named", NOW)
    assert set(sends_of(app_db, "named")) == {"lead@x.com", "form@x.com"}
    assert result_of(app_db, "named")["skipped"] == {
        "invalid_address": 1,
        "outside_project": 1,
    }


@pytest.mark.slow
def test_at_most_1000_recipients_a_run(app_db: AppDatabase, tmp_path: Path) -> None:
    insert_rows(app_db, "projects", [project("p1")])
    events = [
        staged(i, "p1", "lead_created", NOW - timedelta(minutes=i), f"lead{i:04d}@x.com")
        for i in range(1, RECIPIENT_CAP + 6)
    ]
    warehouse = build_warehouse(tmp_path / "warehouse.duckdb", events=events)
    queue_run(app_db, "big", "p1", "send_promo")
    report = execute_run(
        app_db, warehouse, outbox(tmp_path), settings_for(app_db, tmp_path), "big", NOW
    )
    result = result_of(app_db, "big")
    assert report.sent_now == RECIPIENT_CAP == result["sent"]
    assert result["skipped"] == {"capped": 5}
    # Oldest qualifying event first: the 5 newest leads wait for a later run.
    assert "lead0001@x.com" not in sends_of(app_db, "big")
    assert "lead1005@x.com" in sends_of(app_db, "big")


def test_run_cooldown(app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = seed_leads(app_db, tmp_path)
    settings = settings_for(app_db, tmp_path)
    queue_run(app_db, "first", "p1", "send_promo", created_at=NOW - timedelta(minutes=100))
    execute_run(
        app_db, warehouse, outbox(tmp_path), settings, "first", NOW - timedelta(minutes=100)
    )
    queue_run(app_db, "second", "p1", "send_promo")
    report = execute_run(app_db, warehouse, outbox(tmp_path), settings, "second", NOW)
    assert report.status == "failed"
    row = run_row(app_db, "second")
    assert row.status == "failed"
    assert row.error.startswith("cooldown: send_promo run first (succeeded)")
    assert "less than 120 minutes ago" in row.error

    # onboard_users has its own, 60-minute cooldown; p2 has its own runs.
    queue_run(app_db, "onboard", "p1", "onboard_users")
    queue_run(app_db, "p2-promo", "p2", "send_promo")
    onboard = execute_run(app_db, warehouse, outbox(tmp_path), settings, "onboard", NOW)
    assert (onboard.status, onboard.note, onboard.sent_now) == ("succeeded", "", 0)
    assert run_row(app_db, "onboard").error is None
    # Not blocked: its one recipient was skipped only because promo "first" mailed it.
    assert result_of(app_db, "onboard")["skipped"] == {"recently_emailed": 1}
    assert execute_run(app_db, warehouse, outbox(tmp_path), settings, "p2-promo", NOW).status == (
        "succeeded"
    )
    # A failed run does not block; 121 minutes later the cooldown is over.
    queue_run(app_db, "third", "p1", "send_promo", created_at=NOW + timedelta(minutes=21))
    late = execute_run(
        app_db, warehouse, outbox(tmp_path), settings, "third", NOW + timedelta(minutes=21)
    )
    assert late.status == "succeeded"


def test_two_queued_runs_the_older_one_wins(app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = seed_leads(app_db, tmp_path)
    settings = settings_for(app_db, tmp_path)
    queue_run(app_db, "b-newer", "p1", "onboard_users", created_at=NOW - timedelta(minutes=1))
    queue_run(app_db, "a-older", "p1", "onboard_users", created_at=NOW - timedelta(minutes=2))
    newer = execute_run(app_db, warehouse, outbox(tmp_path), settings, "b-newer", NOW)
    older = execute_run(app_db, warehouse, outbox(tmp_path), settings, "a-older", NOW)
    assert newer.status == "failed" and "run a-older (queued)" in newer.note
    assert older.status == "succeeded"


@pytest.mark.parametrize(
    ("action", "params", "error"),
    [
        ("post_update", None, "unknown action 'post_update'"),
        ("send_promo", "{broken", "malformed params: not valid JSON"),
        ("send_promo", "[1, 2]", "malformed params: expected a JSON object, got list"),
        ("send_promo", '{"isUpdate": "yes"}', "malformed params: isUpdate must be true or false"),
    ],
)
def test_malformed_runs_fail_with_a_clear_error(
    app_db: AppDatabase, tmp_path: Path, action: str, params: str | None, error: str
) -> None:
    if params == "{broken" and app_db.dialect == "postgresql":
        pytest.skip("jsonb cannot hold text that is not JSON")
    warehouse = seed_leads(app_db, tmp_path)
    queue_run(app_db, "bad", "p1", action, params)
    report = execute_run(
        app_db, warehouse, outbox(tmp_path), settings_for(app_db, tmp_path), "bad", NOW
    )
    assert report.status == "failed"
    row = run_row(app_db, "bad")
    assert row.status == "failed" and row.error.startswith(error)
    assert row.completed_at is not None
    assert sends_of(app_db, "bad") == {}


def test_unknown_project_fails_the_run(app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = seed_leads(app_db, tmp_path)
    queue_run(app_db, "ghost", "nope", "send_promo")
    execute_run(app_db, warehouse, outbox(tmp_path), settings_for(app_db, tmp_path), "ghost", NOW)
    assert run_row(app_db, "ghost").error == "unknown project 'nope'"


# --- leases, reaper, retention -------------------------------------------------------------


def test_heartbeat_extends_the_lease_and_detects_a_takeover(app_db: AppDatabase) -> None:
    insert_rows(app_db, "projects", [project("p1")])
    queue_run(app_db, "r", "p1", "send_promo")
    run = start_run(app_db, "r", "worker-a", NOW)
    assert isinstance(run, StartedRun)
    later = NOW + timedelta(minutes=3)
    heartbeat(app_db, run, later)
    expires = run_row(app_db, "r").lease_expires_at
    assert stored(app_db, later + LEASE_DURATION) == expires or expires == later + LEASE_DURATION

    reaped = reap_expired_leases(app_db, later + LEASE_DURATION + timedelta(seconds=1))
    assert reaped.requeued == ["r"]
    taken = start_run(app_db, "r", "worker-b", later + LEASE_DURATION + timedelta(seconds=2))
    assert isinstance(taken, StartedRun) and taken.attempt == 2
    with pytest.raises(LeaseLostError):
        heartbeat(app_db, run, later + LEASE_DURATION + timedelta(seconds=3))


class LeaseWatch:
    """Watches a run's lease from a second connection while `execute_run` runs.

    Each transaction of the worker opens its own connection; before it starts (SQLAlchemy's
    `engine_connect` event, so between two of the worker's transactions) the watch reads the
    run's `lease_expires_at` and how many recipients are marked sent: a heartbeat shows up as a
    new expiry next to the number sent before it. With `take_over`, right after the first
    heartbeat the reaper finds the lease expired (as if the worker had stalled for a day) and
    another worker starts the run, as in production.
    """

    def __init__(self, app_db: AppDatabase, run_id: str, take_over: bool = False) -> None:
        self.app_db, self.run_id, self.take_over = app_db, run_id, take_over
        self._observer = sa.create_engine(app_db.engine.url)
        self._busy = False
        # (recipients sent, lease_expires_at) each time the lease changed, starting queued.
        self.leases: list[tuple[int, datetime | None]] = [(0, None)]
        self.taken_over = False

    def __enter__(self) -> "LeaseWatch":
        sa.event.listen(self.app_db.engine, "engine_connect", self._before_transaction)
        return self

    def __exit__(self, *_: object) -> None:
        sa.event.remove(self.app_db.engine, "engine_connect", self._before_transaction)
        self.look()
        self._observer.dispose()

    def look(self) -> None:
        with self._observer.connect() as connection:
            connection.execution_options(isolation_level="AUTOCOMMIT")
            row = connection.execute(
                sa.text(
                    "select lease_expires_at, (select count(*) from workflow_sends"
                    " where run_id = :id and status = 'sent') as sent"
                    " from workflow_runs where id = :id"
                ),
                {"id": self.run_id},
            ).one()
        lease = parse_time(row.lease_expires_at)
        if lease != self.leases[-1][1]:
            self.leases.append((int(row.sent), lease))

    def _before_transaction(self, _connection: sa.Connection) -> None:
        if self._busy:  # the takeover's own transactions
            return
        self.look()
        heartbeats = len(self.leases) - 2  # beyond queued and start_run's lease
        if self.take_over and heartbeats == 1 and not self.taken_over:
            self._busy = True
            try:
                stalled = NOW + timedelta(days=1)
                assert reap_expired_leases(self.app_db, stalled).requeued == [self.run_id]
                assert isinstance(
                    start_run(self.app_db, self.run_id, "worker-b", stalled), StartedRun
                )
            finally:
                self._busy = False
            self.taken_over = True


def stepping_clock(start: datetime) -> Callable[[], datetime]:
    """A worker clock that moves one second a call: every heartbeat sets a later expiry."""
    ticks = itertools.count()
    return lambda: start + timedelta(seconds=next(ticks))


def seed_many_leads(app_db: AppDatabase, tmp_path: Path, count: int) -> Warehouse:
    """p1 with `count` leads of the last day, lead001 oldest (the send order)."""
    insert_rows(app_db, "projects", [project("p1")])
    events = [
        staged(
            i,
            "p1",
            "lead_created",
            NOW - timedelta(days=1) + timedelta(minutes=i),
            f"lead{i:03d}@x.com",
        )
        for i in range(1, count + 1)
    ]
    return build_warehouse(tmp_path / "warehouse.duckdb", events=events)


# Two heartbeats (before recipients 51 and 101) and a last batch of one.
MANY = 2 * HEARTBEAT_EVERY + 1


def queue_many(app_db: AppDatabase, tmp_path: Path) -> Warehouse:
    """A promo run `many` queued for MANY leads; the warehouse holding them."""
    warehouse = seed_many_leads(app_db, tmp_path, MANY)
    queue_run(app_db, "many", "p1", "send_promo")
    return warehouse


def run_many(app_db: AppDatabase, tmp_path: Path, warehouse: Warehouse, **owner: str) -> Any:
    """Execute the run `many` with a clock that advances a second per call."""
    return execute_run(
        app_db,
        warehouse,
        outbox(tmp_path),
        settings_for(app_db, tmp_path),
        "many",
        NOW,
        clock=stepping_clock(NOW),
        **owner,
    )


def test_the_send_loop_extends_the_lease_every_50_recipients(
    app_db: AppDatabase, tmp_path: Path
) -> None:
    warehouse = queue_many(app_db, tmp_path)
    with LeaseWatch(app_db, "many") as watch:
        report = run_many(app_db, tmp_path, warehouse)
    assert (report.status, report.sent_now) == ("succeeded", MANY)
    sent_at_change = [sent for sent, _ in watch.leases]
    # queued, started, a heartbeat after 50 and after 100 sent, released when finished.
    assert sent_at_change == [0, 0, HEARTBEAT_EVERY, 2 * HEARTBEAT_EVERY, MANY]
    started, first, second = (lease for _, lease in watch.leases[1:4])
    assert started == NOW + LEASE_DURATION
    assert first is not None and second is not None and started < first < second
    assert watch.leases[-1][1] is None
    assert sum(outbox_recipients(tmp_path / "outbox").values()) == MANY


def test_a_lease_lost_mid_loop_stops_the_run_at_the_next_heartbeat(
    app_db: AppDatabase, tmp_path: Path
) -> None:
    warehouse = queue_many(app_db, tmp_path)
    with LeaseWatch(app_db, "many", take_over=True) as watch:
        report = run_many(app_db, tmp_path, warehouse, owner="worker-a")
    assert watch.taken_over
    # The worker learns of the takeover at its next heartbeat, before recipient 101: it mailed
    # the first 100 once each, claimed nobody after them, and stops without finishing the run
    # (the new holder owns it now).
    expected = [f"lead{i:03d}@x.com" for i in range(1, 2 * HEARTBEAT_EVERY + 1)]
    assert sends_of(app_db, "many") == dict.fromkeys(expected, ("sent", None))
    assert outbox_recipients(tmp_path / "outbox") == Counter(expected)
    assert report.sent_now == 2 * HEARTBEAT_EVERY
    assert report.status is None
    assert report.note == "run many: lease of worker-a expired and was taken over"
    row = run_row(app_db, "many")
    assert (row.status, row.lease_owner, row.attempts, row.result) == (
        "running",
        "worker-b",
        2,
        None,
    )


def test_reaper_requeues_then_fails_after_three_attempts(app_db: AppDatabase) -> None:
    insert_rows(app_db, "projects", [project("p1")])
    expired = NOW - timedelta(minutes=1)
    for run_id, attempts in (("young", 1), ("spent", 3), ("alive", 1)):
        queue_run(app_db, run_id, "p1", "send_promo", status="running", attempts=attempts)
    for run_id, expires in (
        ("young", expired),
        ("spent", expired),
        ("alive", NOW + LEASE_DURATION),
    ):
        app_db.execute(
            "update workflow_runs set lease_owner = 'dead', lease_expires_at = :e where id = :id",
            {"e": stored(app_db, expires), "id": run_id},
        )
    insert_rows(
        app_db,
        "workflow_sends",
        [
            {
                "project_id": "p1",
                "run_id": run_id,
                "action_id": "send_promo",
                "email": "x@x.com",
                "status": "claimed",
                "idempotency_key": f"workflow:{run_id}:x@x.com",
                "created_at": NOW - timedelta(minutes=10),
            }
            for run_id in ("young", "spent", "alive")
        ],
    )
    report = reap_expired_leases(app_db, NOW)
    assert (report.requeued, report.failed) == (["young"], ["spent"])
    young, spent, alive = (run_row(app_db, r) for r in ("young", "spent", "alive"))
    assert young.status == "queued" and young.lease_owner is None
    assert "re-queued" in young.error and "attempt 1 of 3" in young.error
    assert spent.status == "failed" and spent.error.endswith("gave up")
    assert spent.completed_at is not None
    assert alive.status == "running"
    for run_id, status in (("young", "failed"), ("spent", "failed"), ("alive", "claimed")):
        [(send_status, error)] = sends_of(app_db, run_id).values()
        assert send_status == status
        if status == "failed":
            assert error == "interrupted: lease expired"
    # A repeat changes nothing.
    assert reap_expired_leases(app_db, NOW) == type(report)(requeued=[], failed=[])


def test_retention_prunes_sends_older_than_90_days(app_db: AppDatabase) -> None:
    rows = [
        {
            "project_id": "p1",
            "run_id": "r",
            "action_id": "send_promo",
            "email": f"{age}@x.com",
            "status": status,
            "idempotency_key": f"workflow:r:{age}",
            "created_at": NOW - timedelta(days=age),
        }
        for age, status in ((91, "sent"), (95, "failed"), (89, "sent"), (120, "claimed"))
    ]
    insert_rows(app_db, "workflow_sends", rows)
    assert prune_sends(app_db, NOW) == 2
    assert prune_sends(app_db, NOW) == 0
    left = {row.email for row in app_db.fetch_all("select email from workflow_sends")}
    assert left == {"89@x.com", "120@x.com"}


# --- SMTP: unreachable, then a later run retries without duplicates --------------------------


def test_unreachable_smtp_fails_sends_and_a_later_run_retries_them(
    app_db: AppDatabase, tmp_path: Path, smtp_server: SmtpServer
) -> None:
    warehouse = seed_leads(app_db, tmp_path)
    settings = settings_for(app_db, tmp_path)
    closed = SmtpTransport(url=f"smtp://127.0.0.1:{free_port()}", timeout_seconds=2)
    queue_run(app_db, "down", "p1", "send_promo")
    report = execute_run(app_db, warehouse, closed, settings, "down", NOW)

    assert report.status == "failed" and report.sent_now == 0
    row = run_row(app_db, "down")
    assert row.status == "failed" and row.error.startswith("all 4 sends failed")
    sends = sends_of(app_db, "down")
    assert len(sends) == 4
    for status, error in sends.values():
        assert status == "failed" and error is not None
        assert error.startswith("delivery: smtp 127.0.0.1:") and "connection refused" in error
    assert result_of(app_db, "down")["failure_reasons"] == {"delivery": 4}
    assert outcome_events(app_db) == []

    working = SmtpTransport(url=smtp_server.url())
    queue_run(app_db, "retry", "p1", "send_promo", created_at=NOW + timedelta(minutes=5))
    retry = execute_run(app_db, warehouse, working, settings, "retry", NOW + timedelta(minutes=5))
    assert retry.status == "succeeded" and retry.sent_now == 4
    assert smtp_server.handler.recipients == Counter(dict.fromkeys(sends, 1))
    # A third run finds them all in the 24-hour cooldown.
    queue_run(app_db, "third", "p1", "send_promo", created_at=NOW + timedelta(hours=3))
    execute_run(app_db, warehouse, working, settings, "third", NOW + timedelta(hours=3))
    assert result_of(app_db, "third")["skipped"] == {"recently_emailed": 4}
    assert sum(smtp_server.handler.recipients.values()) == 4
    assert len(outcome_events(app_db)) == 4


def test_a_dead_server_stops_the_run_after_five_failures(
    app_db: AppDatabase, tmp_path: Path
) -> None:
    insert_rows(app_db, "projects", [project("p1")])
    events = [
        staged(i, "p1", "lead_created", NOW - timedelta(minutes=i), f"l{i:02d}@x.com")
        for i in range(1, 13)
    ]
    warehouse = build_warehouse(tmp_path / "warehouse.duckdb", events=events)
    closed = SmtpTransport(url=f"smtp://127.0.0.1:{free_port()}", timeout_seconds=2)
    queue_run(app_db, "down", "p1", "onboard_users")
    execute_run(app_db, warehouse, closed, settings_for(app_db, tmp_path), "down", NOW)
    result = result_of(app_db, "down")
    assert result["failed"] == 5 and result["skipped"] == {"transport_down": 7}
    assert run_row(app_db, "down").error.startswith("stopped after 5 consecutive delivery failures")
