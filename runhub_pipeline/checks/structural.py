"""Rules every warehouse table obeys: its grain is unique, its keys are set, counts and amounts are
never negative and rates stay within [0, 1].

`table_rules()` lists each table's grain and columns (CONTRACT §4-5); business_kpi_daily's are read
from its model's schema. The queries are shaped from these names only.
"""

import functools
from collections.abc import Mapping
from dataclasses import dataclass

from runhub_pipeline.checks import names
from runhub_pipeline.checks.core import CheckEnv, Outcome, fetch, no_offenders, render
from runhub_pipeline.checks.staging_rules import LEDGER_SCOPE
from runhub_pipeline.lineage import model_table_schema


@dataclass(frozen=True)
class TableRules:
    """The structural facts of one table.

    Attributes:
        table: warehouse table (= asset key).
        grain: the columns that identify a row.
        not_null: further columns that must be set (the grain always must).
        non_negative: counts and amounts that are never below zero.
        rates: shares that are NULL or within [0, 1].
        window_column: set on the staged event tables (millions of rows, grain one column): the
            grain check then reports only keys with a row in the ingest windows the run wrote,
            and finds their copies in any other window (see `grain_unique`).
    """

    table: str
    grain: tuple[str, ...]
    not_null: tuple[str, ...] = ()
    non_negative: tuple[str, ...] = ()
    rates: tuple[str, ...] = ()
    window_column: str | None = None

    @property
    def required(self) -> tuple[str, ...]:
        return self.grain + tuple(c for c in self.not_null if c not in self.grain)


_RUN_COUNTS = ("queued", "running", "succeeded", "failed", "stuck_runs")
_OVERVIEW_COUNTS = (
    "payment_failed_24h",
    "checkout_started_24h",
    "abandoned_open",
    "recovered_revenue_cents_7d",
    "workflow_queued_7d",
    "workflow_running_7d",
    "workflow_succeeded_7d",
    "workflow_failed_7d",
    "stuck_runs",
    "digest_sent_30d",
    "digest_failed_30d",
)
_PLATFORM_RATES = (
    "digest_delivery_rate_30d",
    "workflow_completion_rate_7d",
    "empty_state_rate",
    "fresh_share",
)
_LEDGER_COUNTS = ("source_rows", "staged", "duplicates", "quarantined")

# Net revenue is revenue minus refunds: a day of refunds takes it below zero.
_KPI_SIGNED = ("net_revenue_cents",)


def _kpi_rules() -> TableRules:
    """business_kpi_daily's rules, read from its model: every NOT NULL column is set, every count,
    amount and rate (bigint or double) is never negative, net revenue excepted."""
    grain = ("project_id", "day")
    columns = model_table_schema(names.BUSINESS_KPI_DAILY).columns
    return TableRules(
        names.BUSINESS_KPI_DAILY,
        grain=grain,
        not_null=tuple(
            c.name for c in columns if not c.constraints.nullable and c.name not in grain
        ),
        non_negative=tuple(
            c.name for c in columns if c.type in ("bigint", "double") and c.name not in _KPI_SIGNED
        ),
    )


@functools.cache
def table_rules() -> Mapping[str, TableRules]:
    """Every table's rules by table name."""
    return {
        rules.table: rules
        for rules in (
            TableRules(
                names.STG_PROJECTS,
                grain=("project_id",),
                not_null=("timezone", "is_timezone_valid", "locale_norm"),
                non_negative=("forms_count",),
            ),
            TableRules(
                names.STG_BUSINESS_EVENTS,
                grain=("event_id",),
                not_null=(
                    "ingest_window_start",
                    "received_at",
                    "project_id",
                    "event_type",
                    "occurred_at",
                ),
                window_column="ingest_window_start",
            ),
            TableRules(
                names.STG_ANALYTICS_EVENTS,
                grain=("event_id",),
                not_null=(
                    "ingest_window_start",
                    "received_at",
                    "project_id",
                    "session_id",
                    "occurred_at",
                ),
                window_column="ingest_window_start",
            ),
            TableRules(
                names.QUARANTINED_EVENTS,
                grain=("source_table", "source_id"),
                not_null=("reason", "raw", "ingest_window_start"),
            ),
            TableRules(
                names.INGEST_LEDGER,
                grain=("source_table", "window_start"),
                not_null=(*_LEDGER_COUNTS, "ingested_at"),
                non_negative=_LEDGER_COUNTS,
            ),
            TableRules(
                names.FCT_CHECKOUTS,
                grain=("checkout_event_id",),
                not_null=("project_id", "started_at", "status", "credited_revenue_cents"),
                non_negative=("payment_amount_cents", "credited_revenue_cents"),
            ),
            _kpi_rules(),
            TableRules(
                names.REVENUE_BY_CURRENCY_DAILY,
                grain=("project_id", "day", "currency"),
                not_null=("orders", "revenue_cents", "refunds", "refunded_cents"),
                non_negative=("orders", "revenue_cents", "refunds", "refunded_cents"),
            ),
            TableRules(
                names.ALERT_COUNTS_15MIN,
                grain=("project_id", "bucket_start"),
                not_null=("payment_failed", "checkout_started", "abandoned_checkouts"),
                non_negative=("payment_failed", "checkout_started", "abandoned_checkouts"),
            ),
            TableRules(
                names.DIGEST_METRICS,
                grain=("project_id", "locale", "status"),
                not_null=("emails",),
                non_negative=("emails",),
                rates=("delivery_rate",),
            ),
            TableRules(
                names.WORKFLOW_RUN_METRICS,
                grain=("project_id",),
                not_null=_RUN_COUNTS,
                non_negative=_RUN_COUNTS,
            ),
            TableRules(
                names.RUN_OVERVIEW,
                grain=("project_id",),
                not_null=("as_of", *_OVERVIEW_COUNTS),
                non_negative=_OVERVIEW_COUNTS,
            ),
            TableRules(
                names.PLATFORM_SUCCESS_METRICS,
                grain=("as_of",),
                rates=_PLATFORM_RATES,
            ),
        )
    }


_DUPLICATES = """
select {{ grain | join(', ') }}, count(*) as copies
from {{ table }}
group by {{ grain | join(', ') }}
having count(*) > 1
"""

# Windows of the run, and how many source rows they hold (an upper bound of its keys).
_RUN_WINDOWS = "select distinct l.window_start from ingest_ledger as l where {{ scope }}"
_RUN_ROWS = "select coalesce(sum(l.source_rows), 0) from ingest_ledger as l where {{ scope }}"

# The run's keys, looked up in the whole table: a hash table of the run's keys, which DuckDB
# cannot spill to disk.
_RUN_KEYS_DUPLICATES = """
select t.{{ key }}, count(*) as copies
from {{ table }} as t
where t.{{ key }} in (
    select w.{{ key }} from {{ table }} as w where w.{{ window_column }} in ({{ run_windows }})
)
group by t.{{ key }}
having count(*) > 1
"""

# The whole table grouped once, keeping keys with a row in the run's windows: an aggregate, which
# DuckDB spills to disk beyond its memory limit.
_TABLE_DUPLICATES = """
select t.{{ key }}, count(*) as copies
from {{ table }} as t
left join ({{ run_windows }}) as r on r.window_start = t.{{ window_column }}
group by t.{{ key }}
having count(*) > 1 and bool_or(r.window_start is not null)
"""

# Up to this many source rows in the run's windows, the grain check of a staged event table looks
# up the run's keys (a 15-minute tick: grouping the whole table took 0.65 s of every tick at
# 6.7 M rows, and growing); beyond it, it groups the whole table once (a 30-day backfill of
# 60 million analytics events ran out of the 512 MB memory limit with the look-up:
# `bench.run --scale large`, BENCHMARKS.md). Either way a copy in any other window is found.
RUN_KEYS_LOOKUP_MAX_ROWS = 1_000_000

_NULLS = """
select {{ columns | join(', ') }}
from {{ table }}
where {% for c in columns %}{{ c }} is null{{ " or " if not loop.last }}{% endfor %}
"""

_OUT_OF_RANGE = """
select {{ (grain + columns) | join(', ') }}
from {{ table }}
where {% for c in columns -%}
    {{ c }} < {{ low }}{% if high is not none %} or {{ c }} > {{ high }}{% endif %}
    {{- " or " if not loop.last }}
{% endfor %}
"""


def grain_unique(env: CheckEnv, rules: TableRules) -> Outcome:
    grain = ", ".join(rules.grain)
    if rules.window_column is None:
        sql = render(_DUPLICATES, table=rules.table, grain=rules.grain)
    else:
        if len(rules.grain) != 1:
            raise ValueError(f"{rules.table}: a window-scoped grain check needs a one-column grain")
        _, rows = fetch(env.connection, render(_RUN_ROWS, scope=LEDGER_SCOPE), env.scope.params())
        template = (
            _RUN_KEYS_DUPLICATES if rows[0][0] <= RUN_KEYS_LOOKUP_MAX_ROWS else _TABLE_DUPLICATES
        )
        sql = render(
            template,
            table=rules.table,
            key=rules.grain[0],
            window_column=rules.window_column,
            run_windows=render(_RUN_WINDOWS, scope=LEDGER_SCOPE),
        )
    scope = f" ({env.scope.describe()}, re-staged windows)" if rules.window_column else ""
    return no_offenders(
        env,
        sql,
        params=env.scope.params(),
        failed=lambda count: f"{count} duplicated ({grain}) keys{scope}",
        passed=f"one row per ({grain}){scope}",
        metadata={"grain": grain},
    )


def keys_not_null(env: CheckEnv, rules: TableRules) -> Outcome:
    columns = ", ".join(rules.required)
    return no_offenders(
        env,
        render(_NULLS, table=rules.table, columns=rules.required),
        failed=lambda count: f"{count} rows with NULL in {columns}",
        passed=f"{columns} always set",
        metadata={"columns": columns},
    )


def non_negative(env: CheckEnv, rules: TableRules) -> Outcome:
    return _in_range(env, rules, rules.non_negative, high=None)


def rates_in_range(env: CheckEnv, rules: TableRules) -> Outcome:
    return _in_range(env, rules, rules.rates, high=1)


def _in_range(
    env: CheckEnv, rules: TableRules, columns: tuple[str, ...], high: int | None
) -> Outcome:
    sql = render(
        _OUT_OF_RANGE, table=rules.table, grain=rules.grain, columns=columns, low=0, high=high
    )
    bounds = "[0, 1]" if high is not None else ">= 0"
    listed = ", ".join(columns)
    return no_offenders(
        env,
        sql,
        failed=lambda count: f"{count} rows with {listed} outside {bounds}",
        passed=f"{listed} {bounds}",
        metadata={"columns": listed},
    )
