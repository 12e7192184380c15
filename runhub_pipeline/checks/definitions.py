"""The registry of data-quality checks and their Dagster asset checks.

The checks of the tables one asset step writes run in one `@multi_asset_check` op on one read-only
warehouse connection (`Warehouse.run_reader`). A blocking check that fails with ERROR severity fails
that op, and Dagster then skips every asset downstream of the table in the same run (the marts, the
serving publish). The send sensors learn of it through `checks.status`.

The checks are not partitioned (partitioned checks are a preview in Dagster 1.13), so Dagster
records their evaluations without a partition. The window job runs one window as a
single-partition run and more as a range run (`partitions.window_run_selection`); each check reads
the run's windows from `context.partition_time_window`, which spans the whole range of a single-run
backfill, and checks them. Dagster also leaves one "planned" execution row per window of a range
run unresolved beside the evaluation; `status` and `summary` skip over them.

Checks that judge only the run's scope (`CheckRule.scoped`) also re-check the scopes their previous
evaluation failed on (`rechecks`), so a bad window keeps failing until a run re-covers it and
passes.
"""

import functools
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from runhub_pipeline.checks import (
    gx_rule,
    mart_rules,
    names,
    rechecks,
    reconcile,
    staging_rules,
    structural,
)
from runhub_pipeline.checks.core import (
    CheckEnv,
    CheckOptions,
    CheckScope,
    Markdown,
    Outcome,
    Thresholds,
)
from runhub_pipeline.checks.status import latest_completed
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import Warehouse, utc_now
from runhub_pipeline.settings import WINDOW, Settings, floor_to_window, parse_utc

# A run tag that sets the wall clock the checks judge by (the freshness schedule sets its tick);
# without it they use the time of evaluation.
CHECK_TIME_TAG = "runhub/check_time"


@dataclass(frozen=True)
class CheckRule:
    """One check of one table.

    Attributes:
        table: the warehouse table (= asset key) it guards.
        name: check name, from `names`.
        description: what passing means, shown in the Dagster UI.
        evaluate: the check itself.
        blocking: a failure with ERROR severity holds back everything downstream.
        scoped: the check judges only the run's scope (its windows, the rows it wrote), so the
            scopes it failed on are re-checked by its later evaluations until they pass.
    """

    table: str
    name: str
    description: str
    evaluate: Callable[[CheckEnv], Outcome]
    blocking: bool = True
    scoped: bool = False

    @property
    def key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(dg.AssetKey(self.table), self.name)


def _structural_rules(rules: structural.TableRules) -> list[CheckRule]:
    found = [
        CheckRule(
            rules.table,
            names.GRAIN_UNIQUE,
            f"One row per ({', '.join(rules.grain)})"
            + (" among the keys of the windows the run wrote." if rules.window_column else "."),
            functools.partial(structural.grain_unique, rules=rules),
            scoped=rules.window_column is not None,
        ),
        CheckRule(
            rules.table,
            names.KEYS_NOT_NULL,
            f"{', '.join(rules.required)} are never NULL.",
            functools.partial(structural.keys_not_null, rules=rules),
        ),
    ]
    if rules.non_negative:
        found.append(
            CheckRule(
                rules.table,
                names.NON_NEGATIVE,
                f"{', '.join(rules.non_negative)} are never negative.",
                functools.partial(structural.non_negative, rules=rules),
            )
        )
    if rules.rates:
        found.append(
            CheckRule(
                rules.table,
                names.RATES_IN_RANGE,
                f"{', '.join(rules.rates)} are NULL or within [0, 1].",
                functools.partial(structural.rates_in_range, rules=rules),
            )
        )
    return found


def _specific_rules() -> list[CheckRule]:
    return [
        CheckRule(
            names.STG_PROJECTS,
            names.INVALID_TIMEZONES,
            "WARN: projects whose time zone is not a zoneinfo name (their days fall back to UTC).",
            staging_rules.invalid_timezones,
            blocking=False,
        ),
        CheckRule(
            names.STG_BUSINESS_EVENTS,
            names.DEDUPE_KEY_UNIQUE,
            "At most one staged event per (project_id, idempotency_key).",
            staging_rules.dedupe_key_unique,
        ),
        CheckRule(
            names.STG_BUSINESS_EVENTS,
            names.MONEY_AMOUNTS_VALID,
            "Money events have an integer amount >= 0 and a three-letter currency.",
            staging_rules.money_amounts_valid,
        ),
        CheckRule(
            names.QUARANTINED_EVENTS,
            names.QUARANTINE_SHARE,
            "Per window with >= 100 source rows: quarantined share WARN above 1 %, ERROR above"
            " 5 %.",
            staging_rules.quarantine_share,
            scoped=True,
        ),
        CheckRule(
            names.INGEST_LEDGER,
            names.LEDGER_BALANCES,
            "source_rows = staged + duplicates + quarantined, and staged / quarantined equal the"
            " rows in the staging tables, for every window the run wrote.",
            staging_rules.ledger_balances,
            scoped=True,
        ),
        CheckRule(
            names.INGEST_LEDGER,
            names.SOURCE_RECONCILIATION,
            "The app database, recounted by received_at window, has exactly the ledger's source"
            " rows = staged + duplicates + quarantined.",
            reconcile.source_reconciliation,
            scoped=True,
        ),
        CheckRule(
            names.INGEST_LEDGER,
            names.FRESHNESS,
            "WARN: the newest window whose end + ingest lag + 15 min has passed is ingested.",
            staging_rules.freshness,
            blocking=False,
        ),
        CheckRule(
            names.INGEST_LEDGER,
            names.VOLUME_ANOMALY,
            "WARN: source rows per window within 0.3x..3x of the same window in earlier weeks"
            " (weekdays, >= 50 rows).",
            staging_rules.volume_anomaly,
            blocking=False,
        ),
        CheckRule(
            names.FCT_CHECKOUTS,
            names.CHECKOUT_STATUS,
            "Status agrees with paid_at - started_at; only recovered checkouts carry credited"
            " revenue or a recovering run.",
            mart_rules.checkout_status,
        ),
        CheckRule(
            names.BUSINESS_KPI_DAILY,
            names.NET_REVENUE,
            "net_revenue_cents = revenue_cents - refunded_cents.",
            mart_rules.net_revenue,
        ),
        CheckRule(
            names.BUSINESS_KPI_DAILY,
            names.CONVERSION_RATE,
            "conversion_rate = orders / sessions, NULL exactly when sessions = 0.",
            mart_rules.conversion_rate,
        ),
        CheckRule(
            names.BUSINESS_KPI_DAILY,
            names.KPI_RECONCILIATION,
            "KPI totals of every day the run recomputed equal a recount of its staged events.",
            mart_rules.kpi_reconciliation,
            scoped=True,
        ),
        CheckRule(
            names.BUSINESS_KPI_DAILY,
            names.FOREIGN_CURRENCY_REVENUE,
            "WARN: payments or refunds of the run's windows in another currency than the"
            " project's (left out of revenue_cents, kept in revenue_by_currency_daily).",
            mart_rules.foreign_currency_revenue,
            blocking=False,
        ),
    ]


def _gx_rules() -> list[CheckRule]:
    return [
        CheckRule(
            table,
            names.GX_SUITE,
            f"Great Expectations suite checks/suites/{table}.json on the rows the run wrote:"
            " ERROR for a failed critical expectation, WARN for a warning one.",
            functools.partial(gx_rule.gx_suite_check, table=table),
            scoped=True,
        )
        for table in gx_rule.gx_tables()
    ]


@functools.cache
def check_rules() -> tuple[CheckRule, ...]:
    """Every check of every table, in a stable order."""
    rules = [r for t in structural.table_rules().values() for r in _structural_rules(t)]
    rules += _specific_rules() + _gx_rules()
    return tuple(sorted(rules, key=lambda r: (r.table, r.name)))


def blocking_check_keys() -> list[dg.AssetCheckKey]:
    return [rule.key for rule in check_rules() if rule.blocking]


def check_options(settings: Settings, thresholds: Thresholds | None = None) -> CheckOptions:
    return CheckOptions(
        home=settings.home,
        ingest_lag=settings.ingest_lag,
        late_lookback=settings.late_lookback,
        thresholds=thresholds or Thresholds(),
    )


@dataclass(frozen=True)
class CheckGroup:
    """The tables one asset step writes, checked together by one op named `check_<name>`."""

    name: str
    tables: Sequence[str]


def build_checks(
    settings: Settings,
    assets: Iterable[object],
    thresholds: Thresholds | None = None,
) -> list[dg.AssetChecksDefinition]:
    """The checks of every table that `assets` materialize, one check op per asset step.

    The tables one step writes (e.g. all marts) are checked by one op on one read-only
    connection: a step costs Dagster half a second, and the tables are written together anyway.
    """
    groups = [
        CheckGroup(assets_def.node_def.name, [key.to_user_string() for key in assets_def.keys])
        for assets_def in assets
        if isinstance(assets_def, dg.AssetsDefinition) and assets_def.is_executable
    ]
    return build_check_ops(check_options(settings, thresholds), groups)


def build_check_ops(
    options: CheckOptions, groups: Sequence[CheckGroup]
) -> list[dg.AssetChecksDefinition]:
    """One `check_<name>` op per group that has checks."""
    ops = []
    for group in groups:
        rules = [rule for rule in check_rules() if rule.table in group.tables]
        if rules:
            ops.append(_check_op(group, rules, options))
    return ops


def _check_op(
    group: CheckGroup, rules: list[CheckRule], options: CheckOptions
) -> dg.AssetChecksDefinition:
    by_key = {rule.key: rule for rule in rules}
    specs = [
        dg.AssetCheckSpec(
            rule.name, asset=rule.table, blocking=rule.blocking, description=rule.description
        )
        for rule in rules
    ]

    @dg.multi_asset_check(
        name=f"check_{group.name}",
        specs=specs,
        can_subset=True,
        description=f"Data-quality checks of {', '.join(sorted(group.tables))}.",
    )
    def run_checks(
        context: dg.AssetCheckExecutionContext, warehouse: Warehouse, app_db: AppDatabase
    ) -> Iterator[dg.AssetCheckResult]:
        selected = sorted(context.selected_asset_check_keys)
        with warehouse.run_reader(context) as connection:
            env = CheckEnv(
                connection=connection,
                scope=_scope(context, connection, options, group.tables),
                options=options,
                app_db=app_db,
                run_id=context.run.run_id,
            )
            context.log.info(f"{len(selected)} checks over {env.scope.describe()}")
            for key in selected:
                rule = by_key[key]
                yield _result(rule, _evaluate(rule, env, context.instance))

    return run_checks


def _evaluate(rule: CheckRule, env: CheckEnv, instance: dg.DagsterInstance) -> Outcome:
    evaluate = functools.partial(evaluate_safely, rule)
    if not rule.scoped:
        return evaluate(env)
    previous = latest_completed(instance, rule.key)
    metadata = previous.evaluation.metadata if previous is not None else {}
    carried = rechecks.failed_scopes(metadata, env.scope.now)
    return rechecks.evaluate_with_rechecks(evaluate, env, carried)


def evaluate_safely(rule: CheckRule, env: CheckEnv) -> Outcome:
    """Run one check; a check that cannot run counts as failed, with the error shown."""
    try:
        return rule.evaluate(env)
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return Outcome(
            False,
            f"the check could not run: {type(error).__name__}: {message}",
            metadata={"error": f"{type(error).__name__}: {error}"},
        )


def _scope(
    context: dg.AssetCheckExecutionContext,
    connection: Any,
    options: CheckOptions,
    tables: Iterable[str],
) -> CheckScope:
    tagged = context.run.tags.get(CHECK_TIME_TAG)
    now = parse_utc(tagged) if tagged else utc_now()
    started = _written_since(context, tables) or now
    if context.has_partition_key or context.has_partition_key_range:
        window = context.partition_time_window
        return CheckScope(window.start, window.end, started, now)
    # A check-only run without partitions (e.g. from the UI): the late lookback up to the watermark.
    row = connection.execute("select max(window_start) from ingest_ledger").fetchone()
    end = row[0].astimezone(UTC) + WINDOW if row and row[0] else floor_to_window(now)
    return CheckScope(end - options.late_lookback, end, started, now)


def _written_since(
    context: dg.AssetCheckExecutionContext, tables: Iterable[str]
) -> datetime | None:
    """When the rows under check were written: the start of this run, or of the run that last
    materialized the tables if that started earlier (a check-only run re-checks its rows)."""
    instance = context.instance
    run_ids = {context.run.run_id}
    for table in tables:
        latest = instance.fetch_materializations(dg.AssetKey(table), limit=1).records
        run_ids.update(record.run_id for record in latest)
    starts = []
    for run_id in run_ids:
        record = instance.get_run_record_by_id(run_id)
        if record is not None and record.start_time:
            starts.append(record.start_time)
    return datetime.fromtimestamp(min(starts), UTC) if starts else None


def _result(rule: CheckRule, outcome: Outcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=rule.table,
        check_name=rule.name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity.ERROR
        if outcome.severity == "ERROR"
        else dg.AssetCheckSeverity.WARN,
        description=outcome.description,
        metadata=_metadata(outcome.metadata),
    )


def _metadata(values: Mapping[str, Any]) -> dict[str, Any]:
    converted: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Markdown):
            converted[key] = dg.MetadataValue.md(str(value))
        elif isinstance(value, Path):
            converted[key] = dg.MetadataValue.path(str(value))
        elif isinstance(value, datetime):
            converted[key] = dg.MetadataValue.timestamp(value)
        elif isinstance(value, list | dict):
            converted[key] = dg.MetadataValue.json(value)
        else:
            converted[key] = value
    return converted
