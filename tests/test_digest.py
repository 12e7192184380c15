"""The daily digest (issue 5 item 4, CONTRACT §7): due projects, the reported local day, KPIs
against the day before and the same weekday a week earlier, alerts, open abandoned checkouts,
one inhouse_emails row per digest, the next local digest hour (DST gaps), missed days skipped,
broken time zones at their UTC hour, delivery retries on the same row and day, owner addresses
that cannot be mailed, and no project ever seeing another's numbers."""

import zoneinfo
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.email import SmtpTransport
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.schedules import build_send_schedules
from runhub_pipeline.sends.digest import (
    digest_data,
    due_count,
    due_projects,
    end_interrupted_digests,
    first_existing,
    next_digest_at,
    send_due_digests,
)
from runhub_pipeline.sends.jobs import build_send_jobs
from runhub_pipeline.sends.message import address_domain, make_message_id
from runhub_pipeline.sends.policy import DIGEST_MAX_ATTEMPTS, DIGEST_RETRY_DELAY
from runhub_pipeline.sends.stored import parse_time
from tests.factories import insert_rows, project, stored, utc
from tests.smtp_server import SmtpServer, free_port
from tests.test_sends_runs import (  # noqa: F401 - release_connections: autouse fixture
    NOW,
    build_warehouse,
    checkout,
    outbox,
    read_messages,
    release_connections,
    settings_for,
)

BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
# NOW is Monday 2026-03-30 12:00 UTC; Berlin switched to summer time on Sunday 2026-03-29.
REPORTED = date(2026, 3, 29)


def kpi(project_id: str, day: date, **values: Any) -> dict[str, Any]:
    return {"project_id": project_id, "day": day, **values}


def seed(app_db: AppDatabase, tmp_path: Path) -> Warehouse:
    """p1 (Berlin) and p2 (New York) share their owner address and their customers."""
    insert_rows(
        app_db,
        "projects",
        [
            project("p1", name="Alpha Shop", timezone="Europe/Berlin", owner_email="o@x.com"),
            project("p2", name="Beta Shop", timezone="America/New_York", owner_email="O@X.com "),
        ],
    )
    day = timedelta(days=1)
    return build_warehouse(
        tmp_path / "warehouse.duckdb",
        kpis=[
            kpi(
                "p1", REPORTED, revenue_cents=12000, net_revenue_cents=12000, orders=3, sessions=100
            ),
            kpi("p1", REPORTED - day, revenue_cents=10000, net_revenue_cents=10000, sessions=80),
            kpi("p1", REPORTED - 7 * day, revenue_cents=6000, orders=3, sessions=100),
            kpi("p1", REPORTED - 14 * day, revenue_cents=999999),
            kpi("p1", REPORTED + day, revenue_cents=777777),
            kpi("p2", REPORTED, revenue_cents=555, orders=1, sessions=9),
        ],
        alerts=[
            # Berlin's 2026-03-29 is [03-28 23:00, 03-29 22:00) UTC (a 23-hour day).
            {"project_id": "p1", "bucket_start": utc("2026-03-28 22:45"), "payment_failed": 100},
            {"project_id": "p1", "bucket_start": utc("2026-03-28 23:00"), "payment_failed": 2},
            {"project_id": "p1", "bucket_start": utc("2026-03-29 21:45"), "checkout_started": 5},
            {"project_id": "p1", "bucket_start": utc("2026-03-29 22:00"), "checkout_started": 100},
            {"project_id": "p2", "bucket_start": utc("2026-03-29 12:00"), "payment_failed": 7},
        ],
        checkouts=[
            checkout(1, "p1", "a@x.com", NOW - timedelta(hours=10)),
            checkout(2, "p1", "b@x.com", NOW - timedelta(hours=30)),
            checkout(3, "p1", "c@x.com", NOW - timedelta(hours=50)),
            checkout(4, "p1", "d@x.com", NOW - timedelta(hours=5), status="recovered"),
            checkout(5, "p2", "a@x.com", NOW - timedelta(hours=1)),
        ],
    )


def project_row(app_db: AppDatabase, project_id: str) -> Any:
    [row] = app_db.fetch_all("select * from projects where project_id = :p", {"p": project_id})
    return row


def digest_rows(app_db: AppDatabase) -> list[Any]:
    return app_db.fetch_all("select * from inhouse_emails order by project_id, idempotency_key")


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def test_digest_numbers_are_per_project_and_per_local_day(
    app_db: AppDatabase, tmp_path: Path
) -> None:
    warehouse = seed(app_db, tmp_path)
    projects = due_projects(app_db, NOW)
    assert [p.project_id for p in projects] == ["p1", "p2"]
    with warehouse.reader() as connection:
        data = digest_data(connection, projects, NOW)
    p1, p2 = data["p1"], data["p2"]
    assert sorted(p1.daily_kpis) == [REPORTED - timedelta(days=n) for n in (7, 1, 0)]
    assert p1.daily_kpis[REPORTED]["revenue_cents"] == 12000
    assert p1.alerts == {"payment_failed": 2, "checkout_started": 5, "abandoned_checkouts": 0}
    assert (p1.abandoned_open, p1.abandoned_recent) == (2, 1)
    assert list(p2.daily_kpis) == [REPORTED]  # New York's yesterday is 03-29 as well
    assert p2.alerts == {"payment_failed": 7, "checkout_started": 0, "abandoned_checkouts": 0}
    assert (p2.abandoned_open, p2.abandoned_recent) == (1, 1)


def test_one_digest_per_project_and_day(app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = seed(app_db, tmp_path)
    settings = settings_for(app_db, tmp_path)
    report = send_due_digests(app_db, warehouse, outbox(tmp_path), settings, NOW)
    assert report.sent == {("daily_digest", "en"): 2}

    rows = digest_rows(app_db)
    assert [(r.project_id, r.idempotency_key, r.status) for r in rows] == [
        ("p1", "digest:p1:2026-03-29", "sent"),
        ("p2", "digest:p2:2026-03-29", "sent"),
    ]
    assert {(r.template_name, r.locale, r.to_email) for r in rows} == {
        ("daily_digest", "en", "o@x.com")
    }
    assert all(r.sent_at is not None and r.error is None for r in rows)
    assert parse_time(project_row(app_db, "p1").digest_next_at) == utc("2026-03-31 06:00")
    assert parse_time(project_row(app_db, "p2").digest_next_at) == utc("2026-03-31 12:00")

    messages = {str(m["Subject"]): m for m in read_messages(tmp_path / "outbox")}
    [alpha] = [m for s, m in messages.items() if "Alpha Shop" in s]
    [beta] = [m for s, m in messages.items() if "Beta Shop" in s]
    assert alpha["List-Unsubscribe"] is None  # a service message
    alpha_text, beta_text = text_of(alpha), text_of(beta)
    assert "$120.00" in alpha_text and "+20%" in alpha_text and "+100%" in alpha_text
    assert "Orders: 3 (vs. day before new, vs. last Sunday 0%)" in alpha_text
    assert "$5.55" not in alpha_text and "$9,999.99" not in alpha_text
    assert "$7,777.77" not in alpha_text
    assert "$5.55" in beta_text and "$120.00" not in beta_text

    # A second tick finds nothing due; a reset of digest_next_at finds the day already sent.
    again = send_due_digests(app_db, warehouse, outbox(tmp_path), settings, NOW)
    assert not again.sent and not again.already_done
    app_db.execute("update projects set digest_next_at = null")
    reset = send_due_digests(app_db, warehouse, outbox(tmp_path), settings, NOW)
    assert not reset.sent and reset.already_done == ["p1", "p2"]
    assert len(digest_rows(app_db)) == 2 and len(read_messages(tmp_path / "outbox")) == 2
    assert parse_time(project_row(app_db, "p1").digest_next_at) == utc("2026-03-31 06:00")


def test_missed_days_are_skipped_not_caught_up(app_db: AppDatabase, tmp_path: Path) -> None:
    insert_rows(
        app_db,
        "projects",
        [project("p1", timezone="Europe/Berlin", digest_next_at=NOW - timedelta(days=3))],
    )
    warehouse = build_warehouse(tmp_path / "warehouse.duckdb")
    settings = settings_for(app_db, tmp_path)
    send_due_digests(app_db, warehouse, outbox(tmp_path), settings, NOW)
    assert [r.idempotency_key for r in digest_rows(app_db)] == ["digest:p1:2026-03-29"]
    assert parse_time(project_row(app_db, "p1").digest_next_at) == utc("2026-03-31 06:00")


def test_broken_time_zone_gets_its_digest_at_its_utc_hour(
    app_db: AppDatabase, tmp_path: Path
) -> None:
    insert_rows(
        app_db,
        "projects",
        [project("p1", timezone=" Mars/Olympus_Mons", digest_hour=9, locale="ar-EG")],
    )
    warehouse = build_warehouse(tmp_path / "warehouse.duckdb")
    send_due_digests(app_db, warehouse, outbox(tmp_path), settings_for(app_db, tmp_path), NOW)
    [row] = digest_rows(app_db)
    assert (row.idempotency_key, row.locale) == ("digest:p1:2026-03-29", "ar")
    assert parse_time(project_row(app_db, "p1").digest_next_at) == utc("2026-03-31 09:00")
    [message] = read_messages(tmp_path / "outbox")
    html = message.get_body(preferencelist=("html",))
    assert html is not None and 'dir="rtl"' in str(html.get_content())


@pytest.mark.parametrize(
    "overrides",
    [
        {"digest_enabled": False},
        {"owner_email": None},
        {"owner_email": "  "},
        {"digest_next_at": NOW + timedelta(minutes=1)},
    ],
)
def test_projects_not_due(app_db: AppDatabase, overrides: dict[str, Any]) -> None:
    insert_rows(app_db, "projects", [project("p1", **overrides)])
    assert due_projects(app_db, NOW) == []


def test_due_exactly_at_digest_next_at(app_db: AppDatabase) -> None:
    insert_rows(app_db, "projects", [project("p1", digest_next_at=NOW, digest_hour=99)])
    [due] = due_projects(app_db, NOW)
    assert due.digest_hour == 8  # an impossible hour falls back to the default


# --- delivery failures: retried on the same row, a bounded number of times ----------------------


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as persistent:
        yield persistent


def unreachable() -> SmtpTransport:
    return SmtpTransport(url=f"smtp://127.0.0.1:{free_port()}", timeout_seconds=2)


def message_id(app_db: AppDatabase, tmp_path: Path, key: str) -> str:
    return make_message_id(key, address_domain(settings_for(app_db, tmp_path).mail_from))


def test_an_unreachable_server_fails_the_digest_and_the_next_tick_retries_it(
    app_db: AppDatabase,
    tmp_path: Path,
    smtp_server: SmtpServer,
    instance: dg.DagsterInstance,
) -> None:
    warehouse = seed(app_db, tmp_path)
    settings = settings_for(app_db, tmp_path)
    report = send_due_digests(app_db, warehouse, unreachable(), settings, NOW)
    assert report.failed == ["p1", "p2"] and report.retrying == ["p1", "p2"] and not report.sent
    failed = digest_rows(app_db)
    for row in failed:
        assert row.status == "failed" and row.sent_at is None
        assert (
            row.error.startswith("delivery: smtp 127.0.0.1:") and "connection refused" in row.error
        )
        assert row.error.endswith(f"(attempt 1 of {DIGEST_MAX_ATTEMPTS})")
    for project_id in ("p1", "p2"):
        assert (
            parse_time(project_row(app_db, project_id).digest_next_at) == NOW + DIGEST_RETRY_DELAY
        )
    # Not before the retry time: no retry storm.
    assert due_count(app_db, NOW + timedelta(minutes=59)) == 0

    # The server is back; the hourly schedule's next tick runs the digest job.
    later = NOW + DIGEST_RETRY_DELAY
    [schedule] = [s for s in build_send_schedules() if s.name == "daily_digest_schedule"]
    # Closed here, not whenever it is collected: the instance it opens from the ref would then
    # restore this test's closed instance as Dagster's current one for the tests that follow.
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=later, resources={"app_db": app_db}
    ) as context:
        request = schedule(context)
    assert isinstance(request, dg.RunRequest) and request.tags["runhub/digests_due"] == "2"
    working, inbox = SmtpTransport(url=smtp_server.url()), smtp_server.handler
    [job] = [j for j in build_send_jobs(settings) if j.name == "daily_digest"]
    resources = {"app_db": app_db, "warehouse": warehouse, "email": working}
    assert job.execute_in_process(
        run_config=request.run_config, instance=instance, resources=resources
    ).success

    rows = digest_rows(app_db)
    assert [(r.id, r.idempotency_key) for r in rows] == [(r.id, r.idempotency_key) for r in failed]
    assert [r.idempotency_key for r in rows] == ["digest:p1:2026-03-29", "digest:p2:2026-03-29"]
    assert all(r.status == "sent" and r.error is None for r in rows)
    assert all(parse_time(r.sent_at) is not None for r in rows)
    assert sorted(str(m["Message-ID"]) for m in inbox.messages) == sorted(
        message_id(app_db, tmp_path, r.idempotency_key) for r in rows
    )
    assert parse_time(project_row(app_db, "p1").digest_next_at) == utc("2026-03-31 06:00")
    assert parse_time(project_row(app_db, "p2").digest_next_at) == utc("2026-03-31 12:00")

    # A sent row is never claimed again, even when the app resets the next digest time.
    app_db.execute("update projects set digest_next_at = null")
    again = send_due_digests(app_db, warehouse, working, settings, later + timedelta(minutes=5))
    assert again.already_done == ["p1", "p2"] and not again.sent
    assert len(inbox.messages) == 2 and len(digest_rows(app_db)) == 2


def test_a_retry_after_local_midnight_reports_the_first_attempts_day(
    app_db: AppDatabase, tmp_path: Path, smtp_server: SmtpServer
) -> None:
    # 23:00 in Berlin (CEST) on Monday 03-30 is 21:00 UTC; the retry at 22:00 UTC is already
    # Tuesday there, whose yesterday would be 03-30.
    insert_rows(app_db, "projects", [project("p1", timezone="Europe/Berlin", digest_hour=23)])
    warehouse = build_warehouse(tmp_path / "warehouse.duckdb")
    settings = settings_for(app_db, tmp_path)
    first = utc("2026-03-30 21:00")
    assert send_due_digests(app_db, warehouse, unreachable(), settings, first).retrying == ["p1"]
    [failed] = digest_rows(app_db)
    assert failed.idempotency_key == "digest:p1:2026-03-29"

    working, inbox = SmtpTransport(url=smtp_server.url()), smtp_server.handler
    retry = first + DIGEST_RETRY_DELAY
    [due] = due_projects(app_db, retry)
    assert due.reported_day == date(2026, 3, 29)
    # Another worker's stale-`queued` sweep during the retry leaves the attempt in flight alone.
    swept: list[int] = []
    inbox.during_delivery = lambda: swept.append(
        end_interrupted_digests(app_db, retry + timedelta(minutes=1))
    )
    report = send_due_digests(app_db, warehouse, working, settings, retry)
    assert report.sent == {("daily_digest", "en"): 1} and swept == [0]
    [row] = digest_rows(app_db)
    assert (row.id, row.idempotency_key, row.status) == (failed.id, "digest:p1:2026-03-29", "sent")
    [message] = inbox.messages
    assert str(message["Message-ID"]) == message_id(app_db, tmp_path, "digest:p1:2026-03-29")
    assert "March 29" in str(message["Subject"])
    # Tuesday 23:00 in Berlin reports Monday 03-30, as usual.
    assert parse_time(project_row(app_db, "p1").digest_next_at) == utc("2026-03-31 21:00")


def test_retries_stop_after_the_last_attempt_and_the_next_day_goes_out(
    app_db: AppDatabase, tmp_path: Path, smtp_server: SmtpServer
) -> None:
    insert_rows(app_db, "projects", [project("p1", timezone="Europe/Berlin")])
    warehouse = build_warehouse(tmp_path / "warehouse.duckdb")
    settings = settings_for(app_db, tmp_path)
    ticks = [NOW + attempt * DIGEST_RETRY_DELAY for attempt in range(DIGEST_MAX_ATTEMPTS)]
    for attempt, tick in enumerate(ticks, start=1):
        report = send_due_digests(app_db, warehouse, unreachable(), settings, tick)
        assert report.failed == ["p1"]
        [row] = digest_rows(app_db)
        assert row.status == "failed"
        assert row.error.endswith(f"(attempt {attempt} of {DIGEST_MAX_ATTEMPTS})")
        next_at = parse_time(project_row(app_db, "p1").digest_next_at)
        if attempt < DIGEST_MAX_ATTEMPTS:
            assert report.retrying == ["p1"] and next_at == tick + DIGEST_RETRY_DELAY
    # After the last attempt: Berlin's next 08:00, which reports Monday 03-30.
    assert not report.retrying and next_at == utc("2026-03-31 06:00")
    working, inbox = SmtpTransport(url=smtp_server.url()), smtp_server.handler
    after_the_last = ticks[-1] + DIGEST_RETRY_DELAY
    assert due_count(app_db, after_the_last) == 0
    # Even when the app resets the next digest time, a day out of attempts is not sent again.
    app_db.execute("update projects set digest_next_at = null")
    report = send_due_digests(app_db, warehouse, working, settings, after_the_last)
    assert report.already_done == ["p1"] and not inbox.messages

    report = send_due_digests(app_db, warehouse, working, settings, utc("2026-03-31 06:00"))
    assert report.sent == {("daily_digest", "en"): 1}
    rows = digest_rows(app_db)
    assert [(r.idempotency_key, r.status) for r in rows] == [
        ("digest:p1:2026-03-29", "failed"),
        ("digest:p1:2026-03-30", "sent"),
    ]
    [message] = inbox.messages
    assert str(message["Message-ID"]) == message_id(app_db, tmp_path, "digest:p1:2026-03-30")


@pytest.mark.parametrize("owner", ["not an address", " o@x.com\r\nBcc: all@x.com"])
def test_an_owner_address_that_cannot_be_mailed_is_recorded_once_a_day(
    app_db: AppDatabase, tmp_path: Path, owner: str
) -> None:
    insert_rows(app_db, "projects", [project("p1", timezone="Europe/Berlin", owner_email=owner)])
    warehouse = build_warehouse(tmp_path / "warehouse.duckdb")
    settings = settings_for(app_db, tmp_path)
    assert due_count(app_db, NOW) == 1
    report = send_due_digests(app_db, warehouse, outbox(tmp_path), settings, NOW)
    assert report.failed == ["p1"] and not report.retrying and not report.sent
    [row] = digest_rows(app_db)
    assert (row.idempotency_key, row.status, row.to_email) == (
        "digest:p1:2026-03-29",
        "failed",
        owner.strip(),
    )
    assert row.error.startswith("invalid_address: ")
    assert parse_time(project_row(app_db, "p1").digest_next_at) == utc("2026-03-31 06:00")
    # Not every hour: the next tick finds nothing due, and nothing was mailed.
    assert due_count(app_db, NOW + timedelta(hours=1)) == 0
    later = send_due_digests(
        app_db, warehouse, outbox(tmp_path), settings, NOW + timedelta(hours=1)
    )
    assert not later.failed and len(digest_rows(app_db)) == 1
    assert not (tmp_path / "outbox").exists() or read_messages(tmp_path / "outbox") == []
    # The next day gets its own row.
    send_due_digests(app_db, warehouse, outbox(tmp_path), settings, utc("2026-03-31 06:00"))
    assert [r.idempotency_key for r in digest_rows(app_db)] == [
        "digest:p1:2026-03-29",
        "digest:p1:2026-03-30",
    ]


@pytest.mark.parametrize(
    ("day", "hour", "zone", "expected"),
    [
        # New York springs forward at 02:00 on 2026-03-08: 02:00 does not exist, 03:00 EDT does.
        (date(2026, 3, 8), 2, "America/New_York", "2026-03-08 07:00"),
        (date(2026, 3, 8), 3, "America/New_York", "2026-03-08 07:00"),
        # Falls back on 2026-11-01: 01:00 happens twice; the first one counts.
        (date(2026, 11, 1), 1, "America/New_York", "2026-11-01 05:00"),
        (date(2026, 3, 30), 8, "Asia/Kathmandu", "2026-03-30 02:15"),
        # Lord Howe moves 30 minutes, 02:00 -> 02:30, on 2026-10-04.
        (date(2026, 10, 4), 2, "Australia/Lord_Howe", "2026-10-03 15:30"),
        (date(2026, 3, 29), 2, "Europe/Berlin", "2026-03-29 01:00"),
        (date(2026, 3, 29), 0, "UTC", "2026-03-29 00:00"),
    ],
)
def test_first_existing_local_time(day: date, hour: int, zone: str, expected: str) -> None:
    assert first_existing(day, hour, zoneinfo.ZoneInfo(zone)) == utc(expected)


def test_next_digest_at_is_strictly_after_now() -> None:
    at_eight = datetime(2026, 3, 30, 8, 0, tzinfo=BERLIN).astimezone(UTC)
    assert next_digest_at(at_eight, BERLIN, 8) == utc("2026-03-31 06:00")
    assert next_digest_at(at_eight - timedelta(seconds=1), BERLIN, 8) == at_eight
    # The evening before the spring-forward night, hour 2 moves to 03:00 EDT.
    assert next_digest_at(utc("2026-03-07 23:00"), NEW_YORK, 2) == utc("2026-03-08 07:00")
    assert next_digest_at(utc("2026-03-08 07:00"), NEW_YORK, 2) == utc("2026-03-09 06:00")


def test_stored_next_at_round_trips(app_db: AppDatabase) -> None:
    insert_rows(app_db, "projects", [project("p1", digest_next_at=utc("2026-03-31 06:00"))])
    stored_value = project_row(app_db, "p1").digest_next_at
    assert parse_time(stored_value) == utc("2026-03-31 06:00")
    assert stored(app_db, utc("2026-03-31 06:00")) == stored_value or isinstance(
        stored_value, datetime
    )
