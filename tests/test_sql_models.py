"""The mart models: they parse, transpile to PostgreSQL, follow the SQL style and the contract.

Schemas and column lineage shown in Dagster are parsed from the same files.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import dagster as dg
import pytest
import sqlglot
from sqlglot import exp
from sqlglot.tokens import TokenType

from runhub_pipeline.assets.marts import MART_MODELS, PLATFORM_METRICS, build_mart_assets
from runhub_pipeline.assets.serving import SERVED_KPI_ASSET, build_serving_assets
from runhub_pipeline.lineage import column_dependencies, model_table_schema
from runhub_pipeline.models import model_source, render_model, statements_of, transpile
from runhub_pipeline.partitions import fifteen_minute_partitions

MODELS = (*MART_MODELS, PLATFORM_METRICS)

# CONTRACT §5: the columns analysts query, in order.
CONTRACT_COLUMNS = {
    "fct_checkouts": [
        "checkout_event_id", "project_id", "session_id", "email_norm", "started_at", "status",
        "paid_at", "payment_amount_cents", "payment_currency", "credited_revenue_cents",
        "recovered_by_run_id",
    ],
    "business_kpi_daily": [
        "project_id", "day", "sessions", "visitors", "page_views", "form_submissions", "leads",
        "checkouts_started", "payments_failed", "orders", "revenue_cents", "refunds",
        "refunded_cents", "net_revenue_cents", "conversion_rate", "abandoned_checkouts",
        "recovered_checkouts", "recovered_revenue_cents", "workflow_emails_sent", "currency",
        "updated_at",
    ],
    "revenue_by_currency_daily": [
        "project_id", "day", "currency", "orders", "revenue_cents", "refunds", "refunded_cents",
    ],
    "alert_counts_15min": [
        "project_id", "bucket_start", "payment_failed", "checkout_started", "abandoned_checkouts",
    ],
    "digest_metrics": ["project_id", "locale", "status", "emails", "delivery_rate"],
    "workflow_run_metrics": [
        "project_id", "queued", "running", "succeeded", "failed", "stuck_runs",
    ],
    "run_overview": [
        "project_id", "as_of", "payment_failed_24h", "checkout_started_24h", "abandoned_open",
        "recovered_revenue_cents_7d", "workflow_queued_7d", "workflow_running_7d",
        "workflow_succeeded_7d", "workflow_failed_7d", "stuck_runs", "digest_sent_30d",
        "digest_failed_30d", "last_rollup_at", "last_event_received_at", "tracking_connected",
        "payments_connected", "forms_connected",
    ],
}  # fmt: skip


def _statements(model: str) -> list[str]:
    return statements_of(render_model(model))


@pytest.mark.parametrize("model", MODELS)
def test_model_parses_and_transpiles_to_postgres(model: str) -> None:
    for statement in _statements(model):
        assert sqlglot.parse_one(statement, read="duckdb") is not None
        (translated,) = transpile(statement, "postgres")
        sqlglot.parse_one(translated, read="postgres")
        # Values are bound parameters: psycopg's named style after transpiling, never literals.
        assert "$" not in re.sub(r"'[^']*'", "", translated), translated


@pytest.mark.parametrize("model", MODELS)
def test_model_follows_the_sql_style(model: str) -> None:
    source = model_source(model)
    leading = source.split("\n\n", 1)[0]
    assert leading.startswith(f"-- {model}:"), "leading comment names the table"
    assert "grain" in leading or "one row per" in leading
    assert "time column" in leading
    for statement in _statements(model):
        for token in sqlglot.Tokenizer(dialect="duckdb").tokenize(statement):
            if token.token_type not in (TokenType.VAR, TokenType.STRING, TokenType.IDENTIFIER):
                written = statement[token.start : token.end + 1]
                assert written == written.lower(), f"upper-case keyword {written}"
        tree = sqlglot.parse_one(statement, read="duckdb")
        for group in tree.find_all(exp.Group):
            assert not group.args.get("all"), "no GROUP BY ALL"
            assert not any(isinstance(e, exp.Literal) for e in group.expressions), "GROUP BY 1"
        assert not list(tree.find_all(exp.Star)) or "exclude" not in statement.lower()
        for select in tree.find_all(exp.Select):
            sources = [select.args.get("from_"), *(select.args.get("joins") or [])]
            for source in sources:
                if source is not None and isinstance(source.this, exp.Table):
                    assert source.this.alias, f"explicit alias for {source.this.name}"


@pytest.mark.parametrize("model", list(CONTRACT_COLUMNS))
def test_schema_matches_the_contract(model: str) -> None:
    names = [column.name for column in model_table_schema(model).columns]
    assert names == CONTRACT_COLUMNS[model]


def test_counts_and_sums_are_bigint() -> None:
    for model in CONTRACT_COLUMNS:
        for column in model_table_schema(model).columns:
            if column.name.endswith("_cents") or column.name in ("orders", "sessions", "emails"):
                assert column.type == "bigint", (model, column.name)


def test_lineage_follows_the_sql() -> None:
    deps = column_dependencies("business_kpi_daily", ["stg_business_events", "stg_projects"])
    assert ("stg_business_events", "amount_cents") in deps["revenue_cents"]
    assert ("stg_projects", "currency") in deps["revenue_cents"]
    checkout_deps = column_dependencies("fct_checkouts", ["stg_business_events", "stg_projects"])
    assert checkout_deps["started_at"] == [("stg_business_events", "occurred_at")]
    assert checkout_deps["recovered_by_run_id"] == [("stg_business_events", "payload")]


def test_assets_carry_schema_and_lineage() -> None:
    partitions = fifteen_minute_partitions(datetime(2026, 3, 1, tzinfo=UTC))
    assets = [*build_mart_assets(partitions), *build_serving_assets(partitions)]
    assert all(a.backfill_policy == dg.BackfillPolicy.single_run() for a in assets)
    specs = {spec.key.to_user_string(): spec for a in assets for spec in a.specs}
    assert set(specs) == {*MODELS, SERVED_KPI_ASSET}
    for key, spec in specs.items():
        assert spec.description and "grain" in spec.description, key
        assert isinstance(spec.metadata["dagster/column_schema"], dg.TableSchema)
        assert isinstance(spec.metadata["dagster/column_lineage"], dg.TableColumnLineage)
        # On the same 15-minute windows as staging, backfilled in one run per range.
        assert spec.partitions_def == partitions
    deps = {dep.asset_key.to_user_string() for dep in specs[SERVED_KPI_ASSET].deps}
    assert deps == {"business_kpi_daily"}
    platform_deps = {dep.asset_key.to_user_string() for dep in specs[PLATFORM_METRICS].deps}
    assert SERVED_KPI_ASSET in platform_deps
