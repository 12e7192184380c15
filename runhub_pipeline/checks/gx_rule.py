"""The `gx_suite` check: a table's GX suite run on the rows this run wrote to it."""

from pathlib import Path

from runhub_pipeline.checks import gx_suites, names
from runhub_pipeline.checks.core import CheckEnv, Outcome, fetch_frame, render
from runhub_pipeline.checks.staging_rules import LEDGER_SCOPE

# A backfill can write millions of rows; GX on pandas validates at most this many per table.
MAX_ROWS = 250_000

_IN_WINDOWS = "{{ alias }}.ingest_window_start >= $window_start"
_IN_WINDOWS += " and {{ alias }}.ingest_window_start < $window_end"

# The rows of each table that one run wrote, shaped by constants only.
_ROWS: dict[str, str] = {
    names.STG_BUSINESS_EVENTS: "select s.* from stg_business_events as s where "
    + render(_IN_WINDOWS, alias="s"),
    names.STG_ANALYTICS_EVENTS: "select s.* from stg_analytics_events as s where "
    + render(_IN_WINDOWS, alias="s"),
    names.QUARANTINED_EVENTS: "select q.* from quarantined_events as q where "
    + render(_IN_WINDOWS, alias="q"),
    names.INGEST_LEDGER: f"select l.* from ingest_ledger as l where {LEDGER_SCOPE}",
    names.BUSINESS_KPI_DAILY: "select k.* from business_kpi_daily as k"
    " where k.updated_at >= $run_started_at",
    names.FCT_CHECKOUTS: "select c.* from fct_checkouts as c where c.checkout_event_id in ("
    " select s.event_id from stg_business_events as s where "
    + render(_IN_WINDOWS, alias="s")
    + ")",
}

_LIMITED = "select * from ({{ inner }}) as written limit {{ limit }}"


def gx_tables() -> list[str]:
    """Tables with both a suite file and a row selection."""
    return [name for name in gx_suites.suite_names() if name in _ROWS]


def gx_suite_check(env: CheckEnv, table: str) -> Outcome:
    """Validate the run's rows of `table` with `suites/<table>.json`; link the Data Docs."""
    sql = render(_LIMITED, inner=_ROWS[table], limit=MAX_ROWS)
    frame = fetch_frame(env.connection, sql, env.scope.params())
    docs = env.options.data_docs_dir
    metadata: dict[str, object] = {"scope": env.scope.describe()}
    if frame.empty:
        metadata["rows_validated"] = 0
        return Outcome(True, "no rows written by this run", metadata=metadata)
    run = gx_suites.validate_rows(
        table,
        frame,
        sample_rows=env.thresholds.sample_rows,
        results_dir=env.options.gx_results_dir,
        run_name=env.run_id,
        validated_at=env.scope.now,
    )
    metadata.update(run.metadata(env.thresholds.sample_rows))
    index = gx_suites.maybe_build_data_docs(
        docs, env.options.gx_results_dir, env.scope.now, gx_suites.DATA_DOCS_MIN_INTERVAL
    )
    if index is not None:
        metadata["data_docs"] = Path(index)
    if len(frame) >= MAX_ROWS:
        # No ORDER BY: sorting a backfill's millions of wide rows to pick some ran out of memory.
        metadata["note"] = (
            f"validated {MAX_ROWS:,} of the rows the run wrote, in DuckDB's scan order"
            " (not a random sample)"
        )
    if run.passed:
        return Outcome(
            True, f"{run.evaluated} expectations met on {run.rows:,} rows", metadata=metadata
        )
    failed = ", ".join(f.expectation for f in run.failures[:3])
    more = f" and {len(run.failures) - 3} more" if len(run.failures) > 3 else ""
    return Outcome(
        False,
        f"{len(run.failures)} of {run.evaluated} expectations failed: {failed}{more}",
        severity=run.severity,
        metadata=metadata,
    )
