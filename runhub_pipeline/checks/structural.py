"""Rules every warehouse table obeys: its grain is unique, its keys are set, counts and amounts are
never negative and rates stay within [0, 1].

`TABLES` lists each table's grain and columns (CONTRACT §4-5); the queries are shaped from these
constants only.
"""

from dataclasses import dataclass

from runhub_pipeline.checks import names
from runhub_pipeline.checks.core import CheckEnv, Outcome, offenders, render


@dataclass(frozen=True)
class TableRules:
    """The structural facts of one table.

    Attributes:
        table: warehouse table (= asset key).
        grain: the columns that identify a row.
        not_null: further columns that must be set (the grain always must).
        non_negative: counts and amounts that are never below zero.
        rates: shares that are NULL or within [0, 1].
    """

    table: str
    grain: tuple[str, ...]
    not_null: tuple[str, ...] = ()
    non_negative: tuple[str, ...] = ()
    rates: tuple[str, ...] = ()

    @property
    def required(self) -> tuple[str, ...]:
        return self.grain + tuple(c for c in self.not_null if c not in self.grain)


_KPI_COUNTS = (
    "sessions",
    "visitors",
    "page_views",
    "form_submissions",
    "leads",
    "checkouts_started",
    "payments_failed",
    "orders",
    "revenue_cents",
    "refunds",
    "refunded_cents",
    "abandoned_checkouts",
    "recovered_checkouts",
    "recovered_revenue_cents",
    "workflow_emails_sent",
)
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

TABLES: dict[str, TableRules] = {
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
        TableRules(
            names.BUSINESS_KPI_DAILY,
            grain=("project_id", "day"),
            not_null=(*_KPI_COUNTS, "net_revenue_cents", "updated_at"),
            non_negative=(*_KPI_COUNTS, "conversion_rate"),
        ),
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
    found = offenders(
        env.connection,
        render(_DUPLICATES, table=rules.table, grain=rules.grain),
        {},
        env.thresholds.sample_rows,
    )
    grain = ", ".join(rules.grain)
    return Outcome(
        passed=found.count == 0,
        description=f"{found.count} duplicated ({grain}) keys"
        if found.count
        else f"one row per ({grain})",
        metadata={"grain": grain, **found.metadata()},
    )


def keys_not_null(env: CheckEnv, rules: TableRules) -> Outcome:
    found = offenders(
        env.connection,
        render(_NULLS, table=rules.table, columns=rules.required),
        {},
        env.thresholds.sample_rows,
    )
    columns = ", ".join(rules.required)
    return Outcome(
        passed=found.count == 0,
        description=f"{found.count} rows with NULL in {columns}"
        if found.count
        else f"{columns} always set",
        metadata={"columns": columns, **found.metadata()},
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
    found = offenders(env.connection, sql, {}, env.thresholds.sample_rows)
    bounds = "[0, 1]" if high is not None else ">= 0"
    listed = ", ".join(columns)
    return Outcome(
        passed=found.count == 0,
        description=f"{found.count} rows with {listed} outside {bounds}"
        if found.count
        else f"{listed} {bounds}",
        metadata={"columns": listed, **found.metadata()},
    )
