"""Names of the data-quality checks and of the warehouse tables they guard, declared once.

Table names are fixed by CONTRACT.md §4-5 and equal the Dagster asset keys that build them. A check
is addressed as `<table>:<check name>` (a Dagster `AssetCheckKey`); the same check name on
different tables means the same rule applied to that table's columns.
"""

# Warehouse tables (asset keys) that carry checks.
STG_PROJECTS = "stg_projects"
STG_BUSINESS_EVENTS = "stg_business_events"
STG_ANALYTICS_EVENTS = "stg_analytics_events"
QUARANTINED_EVENTS = "quarantined_events"
INGEST_LEDGER = "ingest_ledger"
FCT_CHECKOUTS = "fct_checkouts"
BUSINESS_KPI_DAILY = "business_kpi_daily"
REVENUE_BY_CURRENCY_DAILY = "revenue_by_currency_daily"
ALERT_COUNTS_15MIN = "alert_counts_15min"
DIGEST_METRICS = "digest_metrics"
WORKFLOW_RUN_METRICS = "workflow_run_metrics"
RUN_OVERVIEW = "run_overview"
PLATFORM_SUCCESS_METRICS = "platform_success_metrics"

# Structural rules, applied to every table (ERROR, blocking).
GRAIN_UNIQUE = "grain_unique"
KEYS_NOT_NULL = "keys_not_null"
NON_NEGATIVE = "non_negative"
RATES_IN_RANGE = "rates_in_range"

# Table-specific rules (ERROR, blocking unless noted).
DEDUPE_KEY_UNIQUE = "dedupe_key_unique"
MONEY_AMOUNTS_VALID = "money_amounts_valid"
LEDGER_BALANCES = "ledger_balances"
SOURCE_RECONCILIATION = "source_reconciliation"
QUARANTINE_SHARE = "quarantine_share"  # WARN above 1 %, ERROR above 5 %
NET_REVENUE = "net_revenue_equals_revenue_minus_refunds"
CONVERSION_RATE = "conversion_rate_null_iff_no_sessions"
KPI_RECONCILIATION = "kpi_totals_match_staged_events"
CHECKOUT_STATUS = "checkout_status_consistent"
GX_SUITE = "gx_suite"  # ERROR for a failed critical expectation, WARN for warning ones

# Warnings only (never blocking).
FRESHNESS = "latest_window_fresh"
VOLUME_ANOMALY = "volume_anomaly"
INVALID_TIMEZONES = "invalid_timezones"
FOREIGN_CURRENCY_REVENUE = "foreign_currency_revenue"
