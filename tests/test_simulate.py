"""`runhub simulate`: deterministic, idempotent, realistic, and every quarantine rule represented.

The rows are checked against a small reference reading of CONTRACT §4 written here, so a row the
simulator meant to break one rule must break exactly that rule first, and a clean row none.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.app_schema import migrate
from runhub_pipeline.simulate import (
    ANALYTICS_RULES,
    BUSINESS_RULES,
    ID_BLOCK,
    SimulationError,
    SimulationResult,
    SimulationSpec,
    simulate,
)

END = datetime(2026, 3, 30, 0, 0, tzinfo=UTC)  # the range holds Europe's switch to summer time
SPEC = SimulationSpec(projects=7, days=4, seed=11, end=END, events_per_day=300, bad_rate=0.02)
CLEAN = SimulationSpec(projects=7, days=4, seed=11, end=END, events_per_day=300, bad_rate=0.0)
MONEY_TYPES = {"payment_succeeded", "payment_failed", "refund_issued"}
RECEIVED_AT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")

# Text casts keep JSON `null` apart from SQL NULL on PostgreSQL; SQLite stores JSON as text.
DUMP_QUERIES = {
    "projects": "select * from projects order by project_id",
    "business_events": "select id, project_id, event_type, occurred_at, received_at,"
    " idempotency_key, actor_email, session_id, amount_cents, currency,"
    " cast(payload as text) as payload from business_events order by id",
    "inhouse_analytics_events": "select * from inhouse_analytics_events order by id",
    "workflow_runs": "select * from workflow_runs order by id",
    "inhouse_emails": "select * from inhouse_emails order by id",
    "inhouse_email_suppressions": "select * from inhouse_email_suppressions"
    " order by project_id, email",
}


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def sqlite_db(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], AppDatabase]:
    """A factory of fresh, migrated SQLite app databases."""

    def make() -> AppDatabase:
        folder = tmp_path_factory.mktemp("app")
        app_db = AppDatabase(url=f"sqlite:///{folder / 'app.db'}")
        migrate(app_db)
        return app_db

    return make


@pytest.fixture
def pg_db(postgres_database_factory: Callable[[], str]) -> Callable[[], AppDatabase]:
    """A factory of throwaway, migrated PostgreSQL databases (dropped at session end)."""

    def make() -> AppDatabase:
        app_db = AppDatabase(url=postgres_database_factory())
        migrate(app_db)
        return app_db

    return make


# --- helpers --------------------------------------------------------------------------------


def dump(app_db: AppDatabase) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: [tuple(row) for row in app_db.fetch_all(query)]
        for table, query in DUMP_QUERIES.items()
    }


def rows(app_db: AppDatabase, table: str) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in app_db.fetch_all(DUMP_QUERIES[table])]


def text(value: Any) -> Any:
    """CONTRACT §4 normalization of a text value: trimmed, blank becomes NULL."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    value = text(value)
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def business_reason(row: dict[str, Any], projects: set[str]) -> str | None:
    """The first quarantine rule of CONTRACT §4 a business event breaks, or None."""
    if text(row["project_id"]) not in projects:
        return "unknown_project"
    event_type = text(row["event_type"])
    if event_type is None:
        return "missing_event_type"
    occurred = parse_time(row["occurred_at"])
    if occurred is None:
        return "bad_occurred_at"
    received = parse_time(row["received_at"])
    assert received is not None
    if occurred > received + timedelta(days=1):
        return "future_occurred_at"
    if event_type.lower() in MONEY_TYPES:
        amount = row["amount_cents"]
        if not isinstance(amount, int) or amount < 0:
            return "bad_amount"
        currency = text(row["currency"])
        if currency is None or not re.fullmatch(r"[A-Z]{3}", currency.upper()):
            return "bad_currency"
    if row["payload"] is not None:
        try:
            payload = json.loads(row["payload"])
        except ValueError:
            return "bad_payload"
        if not isinstance(payload, dict):
            return "bad_payload"
    return None


def analytics_reason(row: dict[str, Any], projects: set[str]) -> str | None:
    if text(row["project_id"]) not in projects:
        return "unknown_project"
    if text(row["session_id"]) is None:
        return "missing_session"
    occurred = parse_time(row["occurred_at"])
    if occurred is None:
        return "bad_occurred_at"
    received = parse_time(row["received_at"])
    assert received is not None
    if occurred > received + timedelta(days=1):
        return "future_occurred_at"
    return None


def reasons(app_db: AppDatabase) -> tuple[Counter[str | None], Counter[str | None]]:
    projects = {row["project_id"] for row in rows(app_db, "projects")}
    business = Counter(business_reason(r, projects) for r in rows(app_db, "business_events"))
    analytics = Counter(
        analytics_reason(r, projects) for r in rows(app_db, "inhouse_analytics_events")
    )
    return business, analytics


def check_rules(app_db: AppDatabase, result: SimulationResult) -> None:
    business, analytics = reasons(app_db)
    assert {rule: business[rule] for rule in BUSINESS_RULES} == result.bad_business
    assert {rule: analytics[rule] for rule in ANALYTICS_RULES} == result.bad_analytics
    assert sum(business.values()) == result.business_events
    assert sum(analytics.values()) == result.analytics_events


def clean_business(app_db: AppDatabase) -> list[dict[str, Any]]:
    projects = {row["project_id"] for row in rows(app_db, "projects")}
    return [r for r in rows(app_db, "business_events") if business_reason(r, projects) is None]


def clean_analytics(app_db: AppDatabase) -> list[dict[str, Any]]:
    projects = {row["project_id"] for row in rows(app_db, "projects")}
    return [
        r for r in rows(app_db, "inhouse_analytics_events") if analytics_reason(r, projects) is None
    ]


def lag(row: dict[str, Any]) -> timedelta:
    received, occurred = parse_time(row["received_at"]), parse_time(row["occurred_at"])
    assert received is not None and occurred is not None
    return received - occurred


# --- SQLite ---------------------------------------------------------------------------------


def test_same_spec_gives_the_same_rows(sqlite_db: Callable[[], AppDatabase]) -> None:
    first, second, other = sqlite_db(), sqlite_db(), sqlite_db()
    assert simulate(first, SPEC) == simulate(second, SPEC)
    assert dump(first) == dump(second)
    simulate(other, replace(SPEC, seed=SPEC.seed + 1))
    assert dump(other)["business_events"] != dump(first)["business_events"]


def test_rerun_replaces_instead_of_duplicating(sqlite_db: Callable[[], AppDatabase]) -> None:
    fresh, reused = sqlite_db(), sqlite_db()
    expected = simulate(fresh, SPEC)
    simulate(reused, replace(SPEC, seed=99, projects=5))
    simulate(reused, SPEC)
    assert simulate(reused, SPEC) == expected
    assert dump(reused) == dump(fresh)


def test_every_rule_is_broken_by_exactly_the_rows_meant_to(
    sqlite_db: Callable[[], AppDatabase],
) -> None:
    app_db = sqlite_db()
    result = simulate(app_db, SPEC)
    check_rules(app_db, result)
    assert all(result.bad_business.values()), result.bad_business
    assert all(result.bad_analytics.values()), result.bad_analytics
    # SQLite's loose typing carries the forms a typed column cannot hold.
    amounts = {type(row[0]) for row in app_db.fetch_all("select amount_cents from business_events")}
    assert amounts - {int, type(None)}  # a REAL like 4999.5 or text like 'twelve'


def test_no_rule_is_broken_without_bad_rate(sqlite_db: Callable[[], AppDatabase]) -> None:
    app_db = sqlite_db()
    result = simulate(app_db, CLEAN)
    business, analytics = reasons(app_db)
    assert set(business) == {None} and set(analytics) == {None}
    assert not any(result.bad_business.values()) and not any(result.bad_analytics.values())
    typeof = app_db.fetch_all(
        "select distinct typeof(amount_cents) from business_events where amount_cents is not null"
    )
    assert [row[0] for row in typeof] == ["integer"]


def test_received_at_is_fixed_width_utc_inside_the_range(
    sqlite_db: Callable[[], AppDatabase],
) -> None:
    app_db = sqlite_db()
    simulate(app_db, SPEC)
    start = END - timedelta(days=SPEC.days)
    for table in ("business_events", "inhouse_analytics_events"):
        received = [row["received_at"] for row in rows(app_db, table)]
        assert all(RECEIVED_AT.match(value) for value in received), table
        assert start.strftime("%Y-%m-%dT%H:%M") <= min(received)
        assert max(received) < END.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    occurred = [str(row["occurred_at"]) for row in clean_analytics(app_db)]
    assert any(value.endswith("+05:45") for value in occurred)  # Kathmandu's local time
    assert any(value.endswith("-02:30") for value in occurred)  # St John's, summer time
    assert any(re.fullmatch(r"\S+ \d\d:\d\d:\d\d", value) for value in occurred)  # no offset


def test_ids_follow_arrival_within_each_project_block(sqlite_db: Callable[[], AppDatabase]) -> None:
    app_db = sqlite_db()
    simulate(app_db, SPEC)
    for table in ("business_events", "inhouse_analytics_events"):
        by_block: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for row in rows(app_db, table):
            by_block[row["id"] // ID_BLOCK].append((row["id"], row["received_at"]))
        assert sorted(by_block) == list(range(1, SPEC.projects + 1))
        for block in by_block.values():
            assert [received for _, received in block] == sorted(r for _, r in block)


def test_duplicates_are_resent_copies(sqlite_db: Callable[[], AppDatabase]) -> None:
    app_db = sqlite_db()
    result = simulate(app_db, CLEAN)
    copies: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows(app_db, "business_events"):
        if row["idempotency_key"] is not None:
            copies[(row["project_id"], row["idempotency_key"])].append(row)
    resent = [group for group in copies.values() if len(group) > 1]
    assert sum(len(group) - 1 for group in resent) == result.duplicates > 0
    for group in resent:
        first, *later = sorted(group, key=lambda row: row["id"])
        for copy in later:
            assert copy["received_at"] > first["received_at"]
            same = {k: v for k, v in copy.items() if k not in ("id", "received_at")}
            assert same == {k: v for k, v in first.items() if k not in ("id", "received_at")}


def test_late_arrivals_have_a_tail_of_up_to_two_days(sqlite_db: Callable[[], AppDatabase]) -> None:
    app_db = sqlite_db()
    simulate(app_db, CLEAN)
    lags = [lag(row) for row in clean_business(app_db) + clean_analytics(app_db)]
    assert timedelta(days=1) < max(lags) < timedelta(days=2)
    assert sorted(lags)[len(lags) // 2] < timedelta(seconds=10)
    assert timedelta(minutes=-10) <= min(lags) < timedelta(0)  # client clocks running ahead


def test_projects_cover_zones_locales_and_currencies(sqlite_db: Callable[[], AppDatabase]) -> None:
    app_db = sqlite_db()
    simulate(app_db, SimulationSpec(projects=12, days=2, seed=5, end=END, events_per_day=40))
    projects = rows(app_db, "projects")
    zones = {row["timezone"] for row in projects}
    assert {"UTC", "Asia/Kathmandu", "Asia/Kolkata", "America/St_Johns"} <= zones
    assert {"Europe/Berlin", "America/New_York"} <= zones
    assert {"ar-EG", "fr-CA", "pt-BR", "en", "es", "de-AT"} <= {row["locale"] for row in projects}
    currencies = Counter(row["currency"] for row in projects)
    assert currencies["USD"] + currencies["EUR"] > len(projects) / 2 and len(currencies) > 2
    assert [row["project_id"] for row in projects] == [f"p{n:04d}" for n in range(1, 13)]


def test_checkouts_tell_every_story(sqlite_db: Callable[[], AppDatabase]) -> None:
    app_db = sqlite_db()
    simulate(app_db, SimulationSpec(projects=3, days=6, seed=2, end=END, bad_rate=0))
    events = clean_business(app_db)
    currency_of = {row["project_id"]: row["currency"] for row in rows(app_db, "projects")}
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in events:
        by_type[row["event_type"].strip().lower()].append(row)
    payments = by_type["payment_succeeded"]
    outcomes: Counter[str] = Counter()
    for checkout in by_type["checkout_started"]:
        started = parse_time(checkout["occurred_at"])
        assert started is not None
        email = (checkout["actor_email"] or "").strip().lower()
        delays = [
            (paid - started, payment)
            for payment in payments
            if payment["project_id"] == checkout["project_id"]
            and (paid := parse_time(payment["occurred_at"])) is not None
            and paid >= started
            and (
                payment["session_id"] == checkout["session_id"] is not None
                or (payment["actor_email"] or "").strip().lower() == email != ""
            )
        ]
        if not delays:
            outcomes["never"] += 1
            continue
        delay, payment = min(delays, key=lambda pair: pair[0])
        if delay <= timedelta(minutes=30):
            outcomes["converted"] += 1
        elif delay <= timedelta(hours=48):
            outcomes["recovered"] += 1
            if payment["actor_email"] != checkout["actor_email"]:
                outcomes["recovered in another letter case"] += 1
    assert min(outcomes.values()) > 0 and len(outcomes) == 4, outcomes
    assert by_type["payment_failed"] and by_type["refund_issued"] and by_type["lead_created"]
    assert by_type["form_submitted"]
    foreign = [p for p in payments if p["currency"].strip().upper() != currency_of[p["project_id"]]]
    assert 0 < len(foreign) < len(payments) / 5
    runs = {row["id"] for row in rows(app_db, "workflow_runs")}
    recovery = by_type["recovery_email_sent"]
    assert recovery and all(json.loads(row["payload"])["run_id"] in runs for row in recovery)


def test_some_sessions_cross_local_midnight(sqlite_db: Callable[[], AppDatabase]) -> None:
    app_db = sqlite_db()
    simulate(app_db, CLEAN)
    zone = {row["project_id"]: ZoneInfo(row["timezone"]) for row in rows(app_db, "projects")}
    days: dict[tuple[str, str], set[Any]] = defaultdict(set)
    for row in clean_analytics(app_db):
        project = row["project_id"].strip()
        occurred = parse_time(row["occurred_at"])
        assert occurred is not None
        days[(project, row["session_id"])].add(occurred.astimezone(zone[project]).date())
    crossing = {project for (project, _), dates in days.items() if len(dates) > 1}
    assert {"p0002", "p0005"} <= crossing  # +05:45 and -03:30 zones included


def test_runs_emails_and_suppressions_have_mixed_states(
    sqlite_db: Callable[[], AppDatabase],
) -> None:
    app_db = sqlite_db()
    result = simulate(app_db, SimulationSpec(projects=12, days=10, seed=4, end=END))
    runs = rows(app_db, "workflow_runs")
    assert len(runs) == result.workflow_runs
    assert {"succeeded", "failed"} <= {row["status"] for row in runs}
    assert {"recover_abandoned", "send_promo", "onboard_users"} == {r["action_id"] for r in runs}
    emails = [
        row for row in rows(app_db, "inhouse_emails") if row["template_name"] == "daily_digest"
    ]
    assert {"sent", "failed", "bounced"} <= {row["status"] for row in emails}
    locales = {row["locale"] for row in emails}
    assert None in locales and "ar-EG" in locales and len(locales) > 6
    assert all(row["idempotency_key"].startswith("digest:") for row in emails)
    assert len(rows(app_db, "inhouse_email_suppressions")) == result.suppressions > 0


def test_progress_reports_each_project(sqlite_db: Callable[[], AppDatabase]) -> None:
    lines: list[str] = []
    simulate(sqlite_db(), SimulationSpec(projects=3, days=1, seed=1, end=END), lines.append)
    assert sum(line.startswith("p000") for line in lines) == 3


@pytest.mark.parametrize(
    "change",
    [
        {"end": END + timedelta(minutes=7)},
        {"end": END.replace(tzinfo=None)},
        {"projects": 0},
        {"days": 0},
        {"bad_rate": 1.5},
        {"seed": -1},
    ],
)
def test_unusable_specs_are_refused(
    sqlite_db: Callable[[], AppDatabase], change: dict[str, Any]
) -> None:
    with pytest.raises(SimulationError):
        simulate(sqlite_db(), replace(SPEC, **change))


# --- PostgreSQL -----------------------------------------------------------------------------


@pytest.mark.postgres
def test_postgres_rows_are_deterministic_and_idempotent(
    pg_db: Callable[[], AppDatabase],
) -> None:
    first, second = pg_db(), pg_db()
    result = simulate(first, SPEC)
    simulate(second, replace(SPEC, seed=99))
    assert simulate(second, SPEC) == result
    assert dump(first) == dump(second)


@pytest.mark.postgres
def test_postgres_rule_breaking_rows(
    pg_db: Callable[[], AppDatabase], sqlite_db: Callable[[], AppDatabase]
) -> None:
    app_db = pg_db()
    result = simulate(app_db, SPEC)
    check_rules(app_db, result)
    assert all(result.bad_business.values()) and all(result.bad_analytics.values())
    # The same draws on both dialects: only the forms a typed column cannot hold differ.
    assert simulate(sqlite_db(), SPEC) == result
    clean = pg_db()
    simulate(clean, CLEAN)
    business, analytics = reasons(clean)
    assert set(business) == {None} and set(analytics) == {None}


@pytest.mark.postgres
def test_postgres_late_arrivals_duplicates_and_app_inserts(
    pg_db: Callable[[], AppDatabase],
) -> None:
    app_db = pg_db()
    simulate(app_db, CLEAN)
    longest = app_db.fetch_all(
        "select max(received_at - occurred_at) from business_events"
        " union all select max(received_at - occurred_at) from inhouse_analytics_events"
    )
    assert timedelta(days=1) < max(row[0] for row in longest) < timedelta(days=2)
    resent = app_db.fetch_all(
        "select count(*) - count(distinct (project_id, idempotency_key)) from business_events"
        " where idempotency_key is not null"
    )
    assert resent[0][0] > 0
    zones = {row[0] for row in app_db.fetch_all("select timezone from projects")}
    assert {"Asia/Kathmandu", "America/St_Johns", "Europe/Berlin", "America/New_York"} <= zones
    # The identity sequences were moved past the explicit ids: the app's own inserts still work.
    with app_db.begin() as connection:
        for table in ("business_events", "inhouse_emails"):
            insert = sa.insert(sa.table(table, sa.column("project_id")))
            connection.execute(insert.values(project_id="p0001"))
    highest = app_db.fetch_all("select max(id) from business_events")
    assert highest[0][0] > SPEC.projects * ID_BLOCK
