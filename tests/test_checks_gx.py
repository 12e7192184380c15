"""The Great Expectations suites: they pass on good rows, fail on bad ones with counts and
offending rows, treat an erroring expectation as a failure, and feed the Data Docs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from runhub_pipeline.checks import gx_suites, names
from runhub_pipeline.checks.core import CheckEnv, CheckOptions, CheckScope
from runhub_pipeline.checks.definitions import check_rules
from runhub_pipeline.checks.gx_rule import gx_suite_check, gx_tables
from runhub_pipeline.checks.summary import build_data_docs
from tests.factories import utc

W0 = utc("2026-03-04 10:00")
END = utc("2026-03-04 10:15")
RUN_STARTED = utc("2026-03-04 10:17")
SCOPE = CheckScope(W0, END, run_started_at=RUN_STARTED, now=utc("2026-03-04 10:20"))

_TABLES = """
create table stg_business_events as select
    1::bigint as event_id, $w as ingest_window_start, $w as received_at, 'p1' as project_id,
    'payment_succeeded' as event_type, $w as occurred_at, 'k1' as idempotency_key,
    'A@example.com' as actor_email, 'a@example.com' as email_norm, 's1' as session_id,
    1000::bigint as amount_cents, 'USD' as currency, '{}'::json as payload
union all select
    2, $w, $w, 'p1', 'lead_created', $w, 'k2', null, null, null, null, null, null;
create table stg_analytics_events as select
    11::bigint as event_id, $w as ingest_window_start, $w as received_at, 'p1' as project_id,
    'page_view' as event_name, 's1' as session_id, 'a1' as anonymous_id, '/' as path,
    $w as occurred_at;
create table quarantined_events as select
    'business_events' as source_table, 3::bigint as source_id, 'ghost' as project_id,
    'unknown_project' as reason, '{"id": 3}'::json as raw, $w as ingest_window_start;
create table ingest_ledger as select
    'business_events' as source_table, $w as window_start, 3::bigint as source_rows,
    2::bigint as staged, 0::bigint as duplicates, 1::bigint as quarantined,
    $run as ingested_at, $run as staged_at;
create table business_kpi_daily as select
    'p1' as project_id, date '2026-03-04' as day, 1::bigint as sessions, 1::bigint as visitors,
    1::bigint as page_views, 0::bigint as form_submissions, 0::bigint as leads,
    1::bigint as checkouts_started, 0::bigint as payments_failed, 1::bigint as orders,
    1000::bigint as revenue_cents, 0::bigint as refunds, 0::bigint as refunded_cents,
    1000::bigint as net_revenue_cents, 1.0::double as conversion_rate,
    0::bigint as abandoned_checkouts, 0::bigint as recovered_checkouts,
    0::bigint as recovered_revenue_cents, 0::bigint as workflow_emails_sent,
    'USD' as currency, $run as updated_at;
create table fct_checkouts as select
    1::bigint as checkout_event_id, 'p1' as project_id, 's1' as session_id,
    'a@example.com' as email_norm, $w as started_at, 'converted' as status, $w as paid_at,
    1000::bigint as payment_amount_cents, 'USD' as payment_currency,
    0::bigint as credited_revenue_cents, null::varchar as recovered_by_run_id
"""

# One update per suite that breaks a critical expectation, and the row it breaks.
BAD_ROWS = {
    names.STG_BUSINESS_EVENTS: ("update stg_business_events set amount_cents = -1", 1),
    names.STG_ANALYTICS_EVENTS: ("update stg_analytics_events set session_id = null", 11),
    names.QUARANTINED_EVENTS: ("update quarantined_events set reason = 'because'", 3),
    names.INGEST_LEDGER: ("update ingest_ledger set staged = 4, quarantined = -1", 3),
    names.BUSINESS_KPI_DAILY: ("update business_kpi_daily set abandoned_checkouts = 2", 2),
    names.FCT_CHECKOUTS: ("update fct_checkouts set status = 'lost'", "lost"),
}


@pytest.fixture
def warehouse() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    connection.execute("set TimeZone = 'UTC'")
    values = {"w": W0, "run": RUN_STARTED}
    for statement in _TABLES.split(";"):
        connection.execute(statement, {k: v for k, v in values.items() if f"${k}" in statement})
    yield connection
    connection.close()


def _env(connection: duckdb.DuckDBPyConnection, home: Path) -> CheckEnv:
    options = CheckOptions(home, timedelta(minutes=2), timedelta(hours=48))
    return CheckEnv(connection, SCOPE, options, run_id="run-1")


def test_every_gx_check_has_a_suite_and_a_failing_case() -> None:
    gx_checked = {r.table for r in check_rules() if r.name == names.GX_SUITE}
    assert gx_checked == set(gx_tables()) == set(gx_suites.suite_names()) == set(BAD_ROWS)


@pytest.mark.parametrize("table", sorted(BAD_ROWS))
def test_suite_passes_on_good_rows(
    table: str, warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    outcome = gx_suite_check(_env(warehouse, tmp_path), table)
    assert outcome.passed, (outcome.description, dict(outcome.metadata))
    assert outcome.metadata["rows_validated"] >= 1


@pytest.mark.parametrize("table", sorted(BAD_ROWS))
def test_suite_fails_on_bad_rows_with_counts_and_samples(
    table: str, warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    update, offending = BAD_ROWS[table]
    warehouse.execute(update)
    outcome = gx_suite_check(_env(warehouse, tmp_path), table)
    assert not outcome.passed
    assert outcome.severity == "ERROR"
    metadata = outcome.metadata
    assert metadata["unexpected_rows_total"] >= 1
    assert f"| {offending} |" in metadata["sample"]
    assert "expect_" in metadata["failures"]
    result = Path(metadata["validation_result"])
    assert result.parent == tmp_path / "gx_results" / table and result.exists()
    assert metadata["data_docs"] == tmp_path / "data_docs" / "index.html"
    assert metadata["data_docs"].exists()


def test_a_warning_expectation_only_warns(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    warehouse.execute("update stg_business_events set event_type = 'mystery' where event_id = 2")
    outcome = gx_suite_check(_env(warehouse, tmp_path), names.STG_BUSINESS_EVENTS)
    assert not outcome.passed
    assert outcome.severity == "WARN"
    assert "expect_column_values_to_be_in_set(event_type)" in outcome.description


def test_an_expectation_that_errors_fails_and_shows_the_exception(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    warehouse.execute("alter table stg_analytics_events drop column anonymous_id")
    warehouse.execute("alter table stg_analytics_events drop column event_name")
    outcome = gx_suite_check(_env(warehouse, tmp_path), names.STG_ANALYTICS_EVENTS)
    assert not outcome.passed
    assert outcome.severity == "ERROR"
    assert 'The column "event_name" in BatchData does not exist' in outcome.metadata["failures"]


def test_no_rows_written_passes_without_validating(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    warehouse.execute("delete from stg_business_events")
    outcome = gx_suite_check(_env(warehouse, tmp_path), names.STG_BUSINESS_EVENTS)
    assert outcome.passed
    assert outcome.metadata["rows_validated"] == 0


def test_data_docs_are_rebuilt_at_most_once_an_hour(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    env = _env(warehouse, tmp_path)
    gx_suite_check(env, names.INGEST_LEDGER)
    docs, results = env.options.data_docs_dir, env.options.gx_results_dir
    index = docs / "index.html"
    first = index.stat().st_mtime_ns
    now = datetime.fromtimestamp(index.stat().st_mtime, UTC)
    hour = gx_suites.DATA_DOCS_MIN_INTERVAL
    assert gx_suites.maybe_build_data_docs(docs, results, now + hour / 2, hour) == index
    assert index.stat().st_mtime_ns == first
    gx_suites.maybe_build_data_docs(docs, results, now + hour * 2, hour)
    assert index.stat().st_mtime_ns != first


def test_build_data_docs_now_lists_the_saved_results(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    env = _env(warehouse, tmp_path)
    warehouse.execute("update quarantined_events set reason = 'because'")
    gx_suite_check(env, names.QUARANTINED_EVENTS)
    gx_suite_check(env, names.INGEST_LEDGER)
    index = build_data_docs(tmp_path)
    assert index == tmp_path / "data_docs" / "index.html"
    html = index.read_text()
    assert "quarantined_events" in html and "ingest_ledger" in html
    pages = list((tmp_path / "data_docs" / "validations").rglob("*.html"))
    assert len(pages) == 2
    assert any("run-1" in str(page) for page in pages)


def test_build_data_docs_without_results(tmp_path: Path) -> None:
    index = build_data_docs(tmp_path / "home")
    assert index.exists()


@pytest.mark.slow
def test_definitions_and_status_do_not_import_great_expectations(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from runhub_pipeline.definitions import build_definitions\n"
        "from runhub_pipeline.checks import status, summary\n"
        "from runhub_pipeline.settings import Settings\n"
        f"build_definitions(Settings.from_env({{'RUNHUB_HOME': {str(tmp_path)!r}}}))\n"
        "assert 'great_expectations' not in sys.modules, 'GX imported'\n"
    )
    _run_in_new_process(code)


@pytest.mark.slow
def test_validating_leaves_the_modules_gx_defers_unloaded_until_they_are_used(
    tmp_path: Path,
) -> None:
    code = (
        "import sys\n"
        "from datetime import UTC, datetime\n"
        "import pandas as pd\n"
        "from runhub_pipeline.checks import gx_suites\n"
        "frame = pd.DataFrame({'source_table': ['business_events'], 'source_id': [3],\n"
        "    'project_id': ['p1'], 'reason': ['bad_json'], 'raw': ['{}'],\n"
        "    'ingest_window_start': [datetime(2026, 3, 4, tzinfo=UTC)]})\n"
        "run = gx_suites.validate_rows('quarantined_events', frame, sample_rows=5,\n"
        "    results_dir=None, run_name='r', validated_at=datetime.now(UTC))\n"
        "assert run.evaluated > 0, run\n"
        "loaded = [m for m in ('scipy.stats._stats_py', 'altair.vegalite') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
        "from great_expectations.expectations.core import (\n"
        "    expect_column_kl_divergence_to_be_less_than as kl)\n"
        "assert round(float(kl.stats.entropy([0.5, 0.5])), 4) == 0.6931\n"
        "assert kl.alt.Chart.__name__ == 'Chart'\n"
        "import scipy.stats\n"
        "assert sys.modules['scipy.stats'].norm.cdf(0) == 0.5\n"
    )
    _run_in_new_process(code)


def _run_in_new_process(code: str) -> None:
    """Run `code` in a new interpreter, so what it imports is not already imported by the tests."""
    completed = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
