"""Every SQL data-quality check passes on a correct warehouse and fails on one broken row.

The baseline is built once: staging by the real ingest and staging code from hand-written source
rows, marts written by hand with the exact rows CONTRACT §5 defines for them. Each case copies it,
breaks one rule and runs one check. A check without a failing case here is a defect.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from runhub_pipeline.checks import names
from runhub_pipeline.checks.core import CheckEnv, CheckOptions, CheckScope, Thresholds, render
from runhub_pipeline.checks.definitions import CheckRule, check_rules, evaluate_safely
from runhub_pipeline.checks.structural import RUN_KEYS_LOOKUP_MAX_ROWS, table_rules
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.app_schema import migrate
from runhub_pipeline.resources.warehouse import connect_utc
from tests.factories import (
    FIXED_NOW,
    analytics_event,
    business_event,
    ingest_and_stage,
    insert_rows,
    project,
    utc,
    warehouse_at,
)

# A Wednesday, so the volume check is not quiet for the weekend.
W0 = utc("2026-03-04 10:00")
W1 = utc("2026-03-04 10:15")
END = utc("2026-03-04 10:30")
T = END
SCOPE = CheckScope(W0, END, run_started_at=FIXED_NOW, now=END + timedelta(minutes=20))

_MARTS_DDL = """
create table fct_checkouts (
    checkout_event_id bigint, project_id varchar, session_id varchar, email_norm varchar,
    started_at timestamptz, status varchar, paid_at timestamptz, payment_amount_cents bigint,
    payment_currency varchar, credited_revenue_cents bigint, recovered_by_run_id varchar
);
create table business_kpi_daily (
    project_id varchar, day date, sessions bigint, visitors bigint, page_views bigint,
    form_submissions bigint, leads bigint, checkouts_started bigint, payments_failed bigint,
    orders bigint, revenue_cents bigint, refunds bigint, refunded_cents bigint,
    net_revenue_cents bigint, conversion_rate double, abandoned_checkouts bigint,
    recovered_checkouts bigint, recovered_revenue_cents bigint, workflow_emails_sent bigint,
    currency varchar, updated_at timestamptz
);
create table revenue_by_currency_daily (
    project_id varchar, day date, currency varchar, orders bigint, revenue_cents bigint,
    refunds bigint, refunded_cents bigint
);
create table alert_counts_15min (
    project_id varchar, bucket_start timestamptz, payment_failed bigint, checkout_started bigint,
    abandoned_checkouts bigint
);
create table digest_metrics (
    project_id varchar, locale varchar, status varchar, emails bigint, delivery_rate double
);
create table workflow_run_metrics (
    project_id varchar, queued bigint, running bigint, succeeded bigint, failed bigint,
    stuck_runs bigint
);
create table run_overview (
    project_id varchar, as_of timestamptz, payment_failed_24h bigint,
    checkout_started_24h bigint, abandoned_open bigint, recovered_revenue_cents_7d bigint,
    workflow_queued_7d bigint, workflow_running_7d bigint, workflow_succeeded_7d bigint,
    workflow_failed_7d bigint, stuck_runs bigint, digest_sent_30d bigint,
    digest_failed_30d bigint, last_rollup_at timestamptz, last_event_received_at timestamptz,
    tracking_connected boolean, payments_connected boolean, forms_connected boolean
);
create table platform_success_metrics (
    as_of timestamptz, digest_delivery_rate_30d double, workflow_completion_rate_7d double,
    empty_state_rate double, fresh_share double
)
"""


def _source_rows(app_db: AppDatabase) -> None:
    """p1 in UTC, p2 in Asia/Kathmandu (+05:45): two local days, one without sessions."""
    insert_rows(
        app_db,
        "projects",
        [project("p1"), project("p2", timezone="Asia/Kathmandu")],
    )
    at = utc("2026-03-04 10:01")
    insert_rows(
        app_db,
        "business_events",
        [
            business_event(1, "p1", "checkout_started", at, at, session_id="s1"),
            business_event(
                2,
                "p1",
                "payment_succeeded",
                utc("2026-03-04 10:05"),
                at,
                session_id="s1",
                amount_cents=1000,
                currency="USD",
            ),
            business_event(
                3,
                "p1",
                "refund_issued",
                utc("2026-03-04 10:06"),
                at,
                amount_cents=200,
                currency="usd",
            ),
            business_event(4, "p1", "lead_created", at, at, actor_email=" A@Example.com "),
            business_event(5, "p1", "form_submitted", at, at),
            business_event(6, "p2", "lead_created", utc("2026-03-04 18:20"), at),
            business_event(
                7, "p1", "lead_created", at, utc("2026-03-04 10:02"), idempotency_key="key-4"
            ),
            business_event(8, "ghost", "lead_created", at, at),
            business_event(
                9,
                "p1",
                "payment_failed",
                utc("2026-03-04 10:20"),
                utc("2026-03-04 10:20"),
                amount_cents=500,
                currency="USD",
            ),
        ],
    )
    insert_rows(
        app_db,
        "inhouse_analytics_events",
        [
            analytics_event(11, "p1", "page_view", "s1", at, at, anonymous_id="a1"),
            analytics_event(12, "p1", "page_view", "s1", at, at, anonymous_id="a1"),
            analytics_event(13, "p1", "session_start", "s2", at, at, anonymous_id="a2"),
            analytics_event(14, "p2", "page_view", "s9", utc("2026-03-04 10:10"), at),
        ],
    )


def _mart_rows(connection: duckdb.DuckDBPyConnection) -> None:
    """The marts exactly as CONTRACT §5 defines them for the source rows above."""
    for statement in _MARTS_DDL.split(";"):
        connection.execute(statement)
    params = {"t": T, "updated": FIXED_NOW}
    connection.execute(
        "insert into fct_checkouts values (1, 'p1', 's1', null, timestamptz '2026-03-04 10:01Z',"
        " 'converted', timestamptz '2026-03-04 10:05Z', 1000, 'USD', 0, null)"
    )
    connection.execute(
        "insert into business_kpi_daily values"
        " ('p1', date '2026-03-04', 2, 2, 2, 1, 1, 1, 1, 1, 1000, 1, 200, 800, 0.5, 0, 0, 0, 0,"
        " 'USD', $updated),"
        " ('p2', date '2026-03-04', 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0, 0, 0, 0,"
        " 'USD', $updated),"
        " ('p2', date '2026-03-05', 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, null, 0, 0, 0, 0,"
        " 'USD', $updated)",
        {"updated": params["updated"]},
    )
    connection.execute(
        "insert into revenue_by_currency_daily values ('p1', date '2026-03-04', 'USD', 1, 1000,"
        " 1, 200)"
    )
    connection.execute(
        "insert into alert_counts_15min values ('p1', timestamptz '2026-03-04 10:00Z', 0, 1, 0),"
        " ('p1', timestamptz '2026-03-04 10:15Z', 1, 0, 0)"
    )
    connection.execute("insert into digest_metrics values ('p1', 'en', 'sent', 3, 1.0)")
    connection.execute(
        "insert into workflow_run_metrics values ('p1', 0, 0, 1, 0, 0), ('p2', 0, 0, 0, 0, 0)"
    )
    connection.execute(
        "insert into run_overview values ('p1', $t, 1, 1, 0, 0, 0, 0, 1, 0, 0, 3, 0, $t, $t,"
        " true, true, true), ('p2', $t, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, $t, $t, true, true,"
        " false)",
        {"t": params["t"]},
    )
    connection.execute(
        "insert into platform_success_metrics values ($t, 1.0, 1.0, 0.0, 1.0)", {"t": params["t"]}
    )


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("baseline")
    app_db = AppDatabase(url=f"sqlite:///{folder / 'app.db'}")
    migrate(app_db)
    _source_rows(app_db)
    warehouse = warehouse_at(folder)
    ingest_and_stage(app_db, warehouse, W0, END)
    with warehouse.writer() as connection:
        _mart_rows(connection)
    return Path(warehouse.path)


@pytest.fixture
def warehouse(baseline: Path, tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    copy = tmp_path / "warehouse.duckdb"
    shutil.copyfile(baseline, copy)
    connection = connect_utc(copy)
    yield connection
    connection.close()


def _env(
    connection: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    scope: CheckScope = SCOPE,
    thresholds: Thresholds | None = None,
) -> CheckEnv:
    options = CheckOptions(
        home=tmp_path,
        ingest_lag=timedelta(minutes=2),
        late_lookback=timedelta(hours=48),
        thresholds=thresholds or Thresholds(),
    )
    return CheckEnv(connection, scope, options)


def _rule(table: str, name: str) -> CheckRule:
    return next(r for r in check_rules() if r.table == table and r.name == name)


SQL_RULES = [
    r for r in check_rules() if r.name not in (names.GX_SUITE, names.SOURCE_RECONCILIATION)
]


@pytest.mark.parametrize("rule", SQL_RULES, ids=lambda r: f"{r.table}:{r.name}")
def test_every_check_passes_on_the_baseline(
    rule: CheckRule, warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    outcome = evaluate_safely(rule, _env(warehouse, tmp_path))
    assert outcome.passed, (outcome.description, dict(outcome.metadata))


# --- Breaking one rule per case --------------------------------------------------------------

Breaker = Callable[[duckdb.DuckDBPyConnection], object]


def _shaped(template: str, **shape: str) -> Breaker:
    return lambda connection: connection.execute(render(template, **shape))


def _duplicate_a_row(table: str) -> Breaker:
    return _shaped("insert into {{ t }} select * from {{ t }} limit 1", t=table)


def _null_key(table: str) -> Breaker:
    column = table_rules()[table].required[-1]
    allow = _shaped("alter table {{ t }} alter column {{ c }} drop not null", t=table, c=column)
    clear = _shaped("update {{ t }} set {{ c }} = null", t=table, c=column)
    return lambda connection: (allow(connection), clear(connection))


def _negative(table: str) -> Breaker:
    column = table_rules()[table].non_negative[0]
    return _shaped("update {{ t }} set {{ c }} = -1", t=table, c=column)


def _rate_above_one(table: str) -> Breaker:
    column = table_rules()[table].rates[0]
    return _shaped("update {{ t }} set {{ c }} = 1.5", t=table, c=column)


def _structural_breakers() -> dict[tuple[str, str], Breaker]:
    breakers: dict[tuple[str, str], Breaker] = {}
    for table, rules in table_rules().items():
        breakers[(table, names.GRAIN_UNIQUE)] = _duplicate_a_row(table)
        breakers[(table, names.KEYS_NOT_NULL)] = _null_key(table)
        if rules.non_negative:
            breakers[(table, names.NON_NEGATIVE)] = _negative(table)
        if rules.rates:
            breakers[(table, names.RATES_IN_RANGE)] = _rate_above_one(table)
    return breakers


def _sql(*statements: str) -> Breaker:
    def breaker(connection: duckdb.DuckDBPyConnection) -> None:
        for statement in statements:
            connection.execute(statement)

    return breaker


# The ledger of the past four Wednesdays at 10:00 had 1,000 rows; this one has 100.
_VOLUME_HISTORY = _sql(
    "insert into ingest_ledger select source_table, window_start - to_days(7 * w.n), 1000, 1000,"
    " 0, 0, ingested_at, staged_at from ingest_ledger, (select unnest(range(1, 5)) as n) as w"
    " where window_start = timestamptz '2026-03-04 10:00Z'",
    "update ingest_ledger set source_rows = 100, staged = 100, duplicates = 0, quarantined = 0"
    " where window_start = timestamptz '2026-03-04 10:00Z'",
)

SPECIFIC_BREAKERS: dict[tuple[str, str], Breaker] = {
    (names.STG_PROJECTS, names.INVALID_TIMEZONES): _sql(
        "update stg_projects set is_timezone_valid = false, timezone_raw = 'Mars/Base',"
        " timezone = 'UTC' where project_id = 'p2'"
    ),
    (names.STG_BUSINESS_EVENTS, names.DEDUPE_KEY_UNIQUE): _sql(
        "insert into stg_business_events select * replace (event_id + 100 as event_id)"
        " from stg_business_events where event_id = 4"
    ),
    (names.STG_BUSINESS_EVENTS, names.MONEY_AMOUNTS_VALID): _sql(
        "update stg_business_events set amount_cents = -5 where event_id = 2"
    ),
    (names.QUARANTINED_EVENTS, names.QUARANTINE_SHARE): _sql(
        "update ingest_ledger set source_rows = 200, staged = 180, quarantined = 20"
        " where source_table = 'business_events' and window_start = timestamptz"
        " '2026-03-04 10:00Z'"
    ),
    (names.INGEST_LEDGER, names.LEDGER_BALANCES): _sql(
        "update ingest_ledger set staged = staged + 1 where window_start = timestamptz"
        " '2026-03-04 10:15Z' and source_table = 'business_events'"
    ),
    (names.INGEST_LEDGER, names.FRESHNESS): _sql(
        "delete from ingest_ledger where window_start = timestamptz '2026-03-04 10:15Z'"
        " and source_table = 'inhouse_analytics_events'"
    ),
    (names.INGEST_LEDGER, names.VOLUME_ANOMALY): _VOLUME_HISTORY,
    (names.FCT_CHECKOUTS, names.CHECKOUT_STATUS): _sql(
        "update fct_checkouts set status = 'abandoned' where checkout_event_id = 1"
    ),
    (names.BUSINESS_KPI_DAILY, names.NET_REVENUE): _sql(
        "update business_kpi_daily set net_revenue_cents = 1000 where project_id = 'p1'"
    ),
    (names.BUSINESS_KPI_DAILY, names.CONVERSION_RATE): _sql(
        "update business_kpi_daily set conversion_rate = 0 where conversion_rate is null"
    ),
    (names.BUSINESS_KPI_DAILY, names.KPI_RECONCILIATION): _sql(
        "update business_kpi_daily set page_views = page_views + 1 where project_id = 'p1'"
    ),
    (names.BUSINESS_KPI_DAILY, names.FOREIGN_CURRENCY_REVENUE): _sql(
        "insert into stg_business_events select * replace (event_id + 100 as event_id,"
        " 'EUR' as currency, null as idempotency_key)"
        " from stg_business_events where event_id = 2"
    ),
}

BREAKERS = {**_structural_breakers(), **SPECIFIC_BREAKERS}
WARNINGS = {
    names.INVALID_TIMEZONES,
    names.FRESHNESS,
    names.VOLUME_ANOMALY,
    names.FOREIGN_CURRENCY_REVENUE,
}


def test_every_sql_check_has_a_failing_case() -> None:
    missing = {(r.table, r.name) for r in SQL_RULES} - set(BREAKERS)
    assert not missing, f"checks that no test makes fail: {sorted(missing)}"


@pytest.mark.parametrize("case", sorted(BREAKERS), ids=lambda c: f"{c[0]}:{c[1]}")
def test_every_check_fails_on_bad_data(
    case: tuple[str, str], warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    table, name = case
    BREAKERS[case](warehouse)
    outcome = evaluate_safely(_rule(table, name), _env(warehouse, tmp_path))
    assert not outcome.passed, outcome.description
    assert "could not run" not in outcome.description
    assert outcome.severity == ("WARN" if name in WARNINGS else "ERROR")
    assert outcome.metadata, "a failure shows what failed"
    if "unexpected_rows" in outcome.metadata:
        assert outcome.metadata["unexpected_rows"] > 0
        assert str(outcome.metadata["sample"]) != "(none)"


# --- Thresholds and quiet cases --------------------------------------------------------------


def _share(connection: duckdb.DuckDBPyConnection, source_rows: int, quarantined: int) -> None:
    connection.execute(
        "update ingest_ledger set source_rows = $rows, staged = $rows - $q, duplicates = 0,"
        " quarantined = $q where source_table = 'business_events'"
        " and window_start = timestamptz '2026-03-04 10:00Z'",
        {"rows": source_rows, "q": quarantined},
    )


@pytest.mark.parametrize(
    ("source_rows", "quarantined", "passed", "severity"),
    [
        (200, 2, True, "ERROR"),  # 1 %: not above 1 %
        (200, 4, False, "WARN"),  # 2 %
        (200, 10, False, "WARN"),  # 5 %: not above 5 %
        (200, 11, False, "ERROR"),  # 5.5 %
        (99, 50, True, "ERROR"),  # too few rows to judge
    ],
)
def test_quarantine_share_thresholds(
    warehouse: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    source_rows: int,
    quarantined: int,
    passed: bool,
    severity: str,
) -> None:
    _share(warehouse, source_rows, quarantined)
    rule = _rule(names.QUARANTINED_EVENTS, names.QUARANTINE_SHARE)
    outcome = evaluate_safely(rule, _env(warehouse, tmp_path))
    assert outcome.passed is passed, outcome.description
    if not passed:
        assert outcome.severity == severity


def test_volume_anomaly_is_quiet_on_weekends_and_small_counts(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    rule = _rule(names.INGEST_LEDGER, names.VOLUME_ANOMALY)
    _VOLUME_HISTORY(warehouse)
    assert not evaluate_safely(rule, _env(warehouse, tmp_path)).passed
    small = Thresholds(volume_min_rows=5000)
    assert evaluate_safely(rule, _env(warehouse, tmp_path, thresholds=small)).passed
    # The same drop on a Sunday.
    warehouse.execute("update ingest_ledger set window_start = window_start + interval 4 day")
    sunday = CheckScope(W0 + timedelta(days=4), END + timedelta(days=4), FIXED_NOW, SCOPE.now)
    assert evaluate_safely(rule, _env(warehouse, tmp_path, sunday)).passed


def test_freshness_judges_the_ledger_not_the_last_run(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A run long after the newest window (e.g. a backfill of old windows) is not fresh."""
    rule = _rule(names.INGEST_LEDGER, names.FRESHNESS)
    # Due: the window ending 10:30 at 10:30 + 2 min lag + 15 min.
    on_time = CheckScope(W0, END, FIXED_NOW, now=END + timedelta(minutes=17))
    assert evaluate_safely(rule, _env(warehouse, tmp_path, on_time)).passed
    late = CheckScope(W0, END, FIXED_NOW, now=END + timedelta(minutes=32))
    outcome = evaluate_safely(rule, _env(warehouse, tmp_path, late))
    assert not outcome.passed
    assert outcome.severity == "WARN"
    assert "not ingested through 2026-03-04 10:45" in outcome.description


def test_kpi_reconciliation_finds_a_missing_and_a_surplus_row(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    rule = _rule(names.BUSINESS_KPI_DAILY, names.KPI_RECONCILIATION)
    warehouse.execute("delete from business_kpi_daily where day = date '2026-03-05'")
    outcome = evaluate_safely(rule, _env(warehouse, tmp_path))
    assert not outcome.passed
    assert outcome.metadata["unexpected_rows"] == 1
    warehouse.execute(
        "insert into business_kpi_daily select * replace (date '2026-03-05' as day)"
        " from business_kpi_daily where project_id = 'p1'"
    )
    outcome = evaluate_safely(rule, _env(warehouse, tmp_path))
    # The missing day of p2 and a day of p1 without any staged event.
    assert outcome.metadata["unexpected_rows"] == 2


def test_a_check_that_cannot_run_fails_with_its_error(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    warehouse.execute("drop table business_kpi_daily")
    outcome = evaluate_safely(
        _rule(names.BUSINESS_KPI_DAILY, names.NET_REVENUE), _env(warehouse, tmp_path)
    )
    assert not outcome.passed
    assert outcome.severity == "ERROR"
    assert "could not run" in outcome.description
    assert "business_kpi_daily" in outcome.metadata["error"]


@pytest.mark.parametrize("table", [names.STG_BUSINESS_EVENTS, names.STG_ANALYTICS_EVENTS])
def test_the_staged_grain_check_compares_the_run_s_keys_with_every_window(
    table: str, warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """The staged event tables' grain check reads only the keys of the run's windows, but a copy
    of such a key in an older window still fails it; a run whose windows hold no copied key
    passes, whatever older windows hold (that run did not write them)."""
    rule = _rule(table, names.GRAIN_UNIQUE)
    assert rule.scoped
    # A copy of one of the run's rows, filed a day before the run's windows.
    warehouse.execute(
        render(
            "insert into {{ t }} select * replace (ingest_window_start - interval 1 day as"
            " ingest_window_start) from {{ t }} where ingest_window_start >= $start limit 1",
            t=table,
        ),
        {"start": SCOPE.window_start},
    )
    outcome = evaluate_safely(rule, _env(warehouse, tmp_path))
    assert not outcome.passed
    assert outcome.metadata["unexpected_rows"] == 1
    later = CheckScope(
        END + timedelta(days=1),
        END + timedelta(days=1, minutes=15),
        run_started_at=FIXED_NOW + timedelta(days=1),
        now=END + timedelta(days=1, minutes=20),
    )
    assert evaluate_safely(rule, _env(warehouse, tmp_path, later)).passed


def test_the_staged_grain_check_of_millions_of_keys_stays_within_the_memory_limit(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    """A run with more source rows than `RUN_KEYS_LOOKUP_MAX_ROWS` groups the whole table instead
    of looking its keys up: the look-up's hash table of every key cannot spill, and ran out of
    memory on a 30-day backfill at the large bench scale. Here 2 M keys and a 32 MB limit; the
    check still finds the copy of the run's key and ignores a copy the run did not write."""
    rows = 2_000_000
    assert rows > RUN_KEYS_LOOKUP_MAX_ROWS
    warehouse.execute(
        "insert into stg_analytics_events (event_id, ingest_window_start, received_at,"
        " project_id, event_name, session_id, occurred_at)"
        " select 10_000_000 + i, $w0, $w0, 'p1', 'page_view', 's' || i, $w0 from range($rows) r(i)",
        {"w0": W0, "rows": rows},
    )
    warehouse.execute(
        "update ingest_ledger set source_rows = source_rows + $rows, staged = staged + $rows"
        " where source_table = 'inhouse_analytics_events' and window_start = $w0",
        {"w0": W0, "rows": rows},
    )
    before = W0 - timedelta(days=1)
    # A copy of one of the run's keys in an older window, and a key copied only there.
    warehouse.execute(
        "insert into stg_analytics_events select * replace ($before as ingest_window_start)"
        " from stg_analytics_events where event_id = 10_000_000",
        {"before": before},
    )
    warehouse.execute(
        "insert into stg_analytics_events select * replace (90_000_000 as event_id)"
        " from stg_analytics_events where event_id = 10_000_000 and ingest_window_start = $before",
        {"before": before},
    )
    warehouse.execute(
        "insert into stg_analytics_events select * from stg_analytics_events"
        " where event_id = 90_000_000"
    )
    warehouse.execute("set memory_limit = '32MB'")
    rule = _rule(names.STG_ANALYTICS_EVENTS, names.GRAIN_UNIQUE)
    outcome = evaluate_safely(rule, _env(warehouse, tmp_path))
    assert not outcome.passed
    assert outcome.metadata["unexpected_rows"] == 1, outcome.description
