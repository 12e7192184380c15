"""Blocking checks in real Dagster runs: a failure holds back the publish and the sends.

The pipeline is the real one (ingest, staging, marts, serving); the only change is a quarantine
threshold that judges windows from one source row, so one bad source row is an ERROR.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from runhub_pipeline.assets.serving import SERVED_KPI_ASSET
from runhub_pipeline.assets.staging import STAGING_ASSET_KEYS
from runhub_pipeline.checks import names, reconcile, structural
from runhub_pipeline.checks.accept import AcceptError, accept_failure
from runhub_pipeline.checks.core import CheckEnv, Outcome, Thresholds
from runhub_pipeline.checks.definitions import build_checks, check_rules
from runhub_pipeline.checks.status import blocking_checks_gate
from runhub_pipeline.checks.summary import check_history, check_summary
from runhub_pipeline.definitions import WINDOW_JOB, build_definitions
from runhub_pipeline.orchestration import run_outcome
from runhub_pipeline.partitions import RANGE_END_TAG, RANGE_START_TAG, partition_key
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.settings import Settings
from runhub_pipeline.watermark import current_watermark
from tests.factories import analytics_event, business_event, insert_rows, project, utc

pytestmark = pytest.mark.slow

W0 = utc("2026-03-04 10:00")
W1 = utc("2026-03-04 10:15")
W2 = utc("2026-03-04 10:30")


def _good_rows(app_db: AppDatabase, first_id: int, at: Any) -> None:
    insert_rows(
        app_db,
        "business_events",
        [
            business_event(first_id, "p1", "checkout_started", at, at, session_id="s1"),
            business_event(
                first_id + 1,
                "p1",
                "payment_succeeded",
                at,
                at,
                session_id="s1",
                amount_cents=900,
                currency="USD",
            ),
        ],
    )
    insert_rows(
        app_db,
        "inhouse_analytics_events",
        [analytics_event(first_id, "p1", "page_view", "s1", at, at)],
    )


@dataclass(frozen=True)
class Pipeline:
    settings: Settings
    definitions: dg.Definitions
    instance: dg.DagsterInstance

    def rebuilt(self) -> dg.Definitions:
        """The same pipeline, its checks built again from the current rule registry."""
        return _definitions(self.settings)


def _definitions(settings: Settings) -> dg.Definitions:
    base = build_definitions(settings)
    return dg.Definitions(
        assets=base.assets,
        asset_checks=build_checks(settings, base.assets or [], Thresholds(quarantine_min_rows=1)),
        jobs=base.jobs,
        resources=base.resources,
        executor=base.executor,
    )


@pytest.fixture
def pipeline(sqlite_app_db: AppDatabase, tmp_path: Path) -> Iterator[Pipeline]:
    """Source rows: W0 good, W1 one row of an unknown project, W2 good."""
    insert_rows(sqlite_app_db, "projects", [project("p1")])
    _good_rows(sqlite_app_db, 1, utc("2026-03-04 10:01"))
    at = utc("2026-03-04 10:16")
    insert_rows(
        sqlite_app_db, "business_events", [business_event(10, "ghost", "lead_created", at, at)]
    )
    _good_rows(sqlite_app_db, 20, utc("2026-03-04 10:31"))
    settings = Settings.from_env(
        {
            "RUNHUB_HOME": str(tmp_path / "home"),
            "RUNHUB_APP_DB_URL": sqlite_app_db.url,
            "RUNHUB_PARTITIONS_START": "2026-03-04T00:00Z",
        }
    )
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield Pipeline(settings, _definitions(settings), instance)


def _run(
    definitions: dg.Definitions, instance: Any, first: Any, last: Any, job: str = WINDOW_JOB
) -> dg.ExecuteInProcessResult:
    return definitions.resolve_job_def(job).execute_in_process(
        instance=instance,
        tags={RANGE_START_TAG: partition_key(first), RANGE_END_TAG: partition_key(last)},
        raise_on_error=False,
    )


def _materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {
        e.asset_key.to_user_string()
        for e in result.get_asset_materialization_events()
        if e.asset_key
    }


def _description(result: dg.ExecuteInProcessResult, check_name: str) -> str:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.check_name == check_name]
    assert evaluation.description
    return evaluation.description


def _served(app_db: AppDatabase) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in app_db.fetch_all("select * from business_kpi_daily order by project_id, day")
    ]


def _published_watermark(pipeline: Pipeline) -> Any:
    """T in the published warehouse snapshot, the one analysts and sensors read."""
    warehouse = Warehouse(path=str(pipeline.settings.warehouse_path))
    with warehouse.reader() as connection:
        return current_watermark(connection)


def test_a_blocking_failure_holds_back_publish_and_sends(
    pipeline: Pipeline, sqlite_app_db: AppDatabase
) -> None:
    definitions, instance = pipeline.definitions, pipeline.instance

    first = _run(definitions, instance, W0, W0)
    assert first.success
    assert SERVED_KPI_ASSET in _materialized(first)
    assert _published_watermark(pipeline) == W1
    served = _served(sqlite_app_db)
    assert len(served) == 1
    gate = blocking_checks_gate(instance, definitions)
    assert gate.ok and gate.state == "passed", gate.reason()

    second = _run(definitions, instance, W1, W1)
    assert not second.success
    # What `runhub backfill` prints names the check as `runhub accept-check` takes it, and why.
    assert run_outcome(second).failure == (
        "step check_ingest_and_stage: blocking check quarantined_events:quarantine_share failed: "
        + _description(second, names.QUARANTINE_SHARE)
    )
    materialized = _materialized(second)
    assert names.QUARANTINED_EVENTS in materialized
    assert names.BUSINESS_KPI_DAILY not in materialized
    assert SERVED_KPI_ASSET not in materialized
    assert _served(sqlite_app_db) == served
    # W1 is staged in the writer file, but the run stopped: the snapshot is still the first's.
    assert _published_watermark(pipeline) == W1
    gate = blocking_checks_gate(instance, definitions)
    assert gate.state == "blocked" and not gate.ok
    assert "quarantined_events:quarantine_share" in gate.reason()
    # The marts kept their checked data of the first run: only the failed check blocks.
    assert [p.check for p in gate.problems] == ["quarantined_events:quarantine_share"]
    summary = check_summary(instance, definitions)
    assert summary.failed == 1
    assert summary.skipped > 0  # the marts' checks, not evaluated in the failed run
    assert summary.problems[0].startswith("ERROR quarantined_events:quarantine_share")

    # A good run of another window does not clear W1: the check re-checks it and fails again.
    third = _run(definitions, instance, W2, W2)
    assert not third.success
    assert SERVED_KPI_ASSET not in _materialized(third)
    assert _served(sqlite_app_db) == served
    gate = blocking_checks_gate(instance, definitions)
    assert gate.state == "blocked"
    assert "still failing since an earlier run" in gate.reason()
    assert "2026-03-04 10:15" in gate.reason()

    # Nor does the late-commit sensor's single-partition run of another window.
    late = definitions.resolve_job_def(WINDOW_JOB).execute_in_process(
        instance=instance, partition_key=partition_key(W0), raise_on_error=False
    )
    assert not late.success
    assert blocking_checks_gate(instance, definitions).state == "blocked"

    # The project appears in the app; a run that re-covers W1 passes and publishes the backlog.
    insert_rows(sqlite_app_db, "projects", [project("ghost")])
    fixed = _run(definitions, instance, W1, W1)
    assert fixed.success
    assert SERVED_KPI_ASSET in _materialized(fixed)
    assert _published_watermark(pipeline) == W2 + (W2 - W1)  # W2, ingested by the third run
    assert _served(sqlite_app_db) != served
    gate = blocking_checks_gate(instance, definitions)
    assert gate.ok, gate.reason()

    history = check_history(instance, names.QUARANTINED_EVENTS, names.QUARANTINE_SHARE)
    assert [h.outcome for h in history] == ["passed", "failed", "failed", "failed", "passed"]
    assert [h.run_id for h in history] == [
        fixed.run_id,
        late.run_id,
        third.run_id,
        second.run_id,
        first.run_id,
    ]
    assert history[3].metadata["windows_over_error"] == 1
    assert history[2].metadata["windows_over_error"] == 1  # the re-checked window W1
    assert history[2].metadata["this_run"].startswith("quarantine share <= 1%")
    assert history[0].metadata["failed_scopes"] == []


def test_a_blocking_failure_of_any_mart_holds_back_the_publish(
    pipeline: Pipeline, sqlite_app_db: AppDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All marts are built in one step and checked in one op: a failed blocking check of
    digest_metrics holds back the publish of business_kpi_daily too."""

    def broken(env: CheckEnv, rules: structural.TableRules) -> Outcome:
        return Outcome(False, f"{rules.table}: rates out of range")

    monkeypatch.setattr(structural, "rates_in_range", broken)
    check_rules.cache_clear()
    try:
        definitions = pipeline.rebuilt()
    finally:
        check_rules.cache_clear()
    result = _run(definitions, pipeline.instance, W0, W0)
    assert not result.success
    assert names.DIGEST_METRICS in _materialized(result)
    assert SERVED_KPI_ASSET not in _materialized(result)
    assert _served(sqlite_app_db) == []
    gate = blocking_checks_gate(pipeline.instance, definitions)
    assert [p.check for p in gate.problems] == ["digest_metrics:rates_in_range"]


def test_a_window_that_failed_reconciliation_keeps_failing_until_re_read(
    pipeline: Pipeline, sqlite_app_db: AppDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row committed into W0 while its run was between staging and checks: W0 fails
    reconciliation, and keeps failing in runs of other windows until a run re-reads W0."""
    recount = reconcile.source_reconciliation
    late_row = business_event(
        99, "p1", "lead_created", utc("2026-03-04 10:05"), utc("2026-03-04 10:05")
    )

    def committed_during_the_run(env: CheckEnv) -> Outcome:
        if not sqlite_app_db.fetch_all("select id from business_events where id = 99"):
            insert_rows(sqlite_app_db, "business_events", [late_row])
        return recount(env)

    monkeypatch.setattr(reconcile, "source_reconciliation", committed_during_the_run)
    check_rules.cache_clear()
    try:
        definitions = pipeline.rebuilt()
    finally:
        check_rules.cache_clear()
    instance = pipeline.instance

    first = _run(definitions, instance, W0, W0)
    assert not first.success
    assert SERVED_KPI_ASSET not in _materialized(first)

    other = _run(definitions, instance, W2, W2)
    assert not other.success
    assert SERVED_KPI_ASSET not in _materialized(other)
    gate = blocking_checks_gate(instance, definitions)
    assert [p.check for p in gate.problems] == ["ingest_ledger:source_reconciliation"]
    assert "2026-03-04 10:00" in gate.reason()
    (latest, *_) = check_history(instance, names.INGEST_LEDGER, names.SOURCE_RECONCILIATION)
    assert latest.run_id == other.run_id and latest.outcome == "failed"
    assert "| business_events | 2026-03-04T10:00:00+00:00 | 3 | 2 |" in latest.metadata["sample"]

    # What the late-commit sensor requests: W0 again.
    reread = _run(definitions, instance, W0, W0)
    assert reread.success
    assert SERVED_KPI_ASSET in _materialized(reread)
    assert blocking_checks_gate(instance, definitions).ok


def test_a_range_run_checks_the_whole_range(pipeline: Pipeline, sqlite_app_db: AppDatabase) -> None:
    definitions, instance = pipeline.definitions, pipeline.instance
    result = _run(definitions, instance, W0, W2)
    assert not result.success
    assert SERVED_KPI_ASSET not in _materialized(result)
    assert _served(sqlite_app_db) == []
    (latest,) = check_history(instance, names.QUARANTINED_EVENTS, names.QUARANTINE_SHARE)
    assert latest.outcome == "failed"
    assert latest.metadata["scope"] == "windows [2026-03-04 10:00, 2026-03-04 10:45) UTC"
    assert "| business_events | 2026-03-04T10:15:00+00:00 | 1 | 1 |" in latest.metadata["sample"]
    assert blocking_checks_gate(instance, definitions).state == "blocked"


def test_data_not_checked_yet_keeps_the_gate_closed(
    pipeline: Pipeline,
) -> None:
    definitions, instance = pipeline.definitions, pipeline.instance
    assert _run(definitions, instance, W0, W0).success
    unchecked = dg.define_asset_job(
        "materialize_without_checks",
        selection=dg.AssetSelection.all() - dg.AssetSelection.all_asset_checks(),
        partitions_def=definitions.resolve_job_def(WINDOW_JOB).partitions_def,
    )
    with_unchecked = dg.Definitions.merge(definitions, dg.Definitions(jobs=[unchecked]))
    assert _run(with_unchecked, instance, W2, W2, job="materialize_without_checks").success
    gate = blocking_checks_gate(instance, definitions)
    assert gate.state == "pending"
    assert "latest data not evaluated yet" in gate.reason()
    assert (
        blocking_checks_gate(instance, definitions, tables=[names.PLATFORM_SUCCESS_METRICS]).state
        == "pending"
    )


def test_an_accepted_failure_stops_blocking(pipeline: Pipeline, sqlite_app_db: AppDatabase) -> None:
    """The operator's way out of a failure the source will never fix: accept it with a reason."""
    definitions, instance = pipeline.definitions, pipeline.instance
    check = f"{names.QUARANTINED_EVENTS}:{names.QUARANTINE_SHARE}"
    assert _run(definitions, instance, W0, W0).success
    served = _served(sqlite_app_db)
    with pytest.raises(AcceptError, match="no failed evaluation"):
        accept_failure(instance, definitions, check, "nothing failed yet")

    assert not _run(definitions, instance, W1, W1).success
    assert blocking_checks_gate(instance, definitions).state == "blocked"
    with pytest.raises(AcceptError, match="no check named"):
        accept_failure(instance, definitions, "quarantined_events:no_such_check", "typo")

    accepted = accept_failure(instance, definitions, check, "partner export of 4 March, INC-7")
    assert accepted.failure == "1 windows quarantined more than 5% (max 100.0%)"
    gate = blocking_checks_gate(instance, definitions)
    assert gate.ok, gate.reason()

    # The next run of another window no longer re-checks W1: it passes and publishes.
    later = _run(definitions, instance, W2, W2)
    assert later.success
    assert _served(sqlite_app_db) != served
    history = check_history(instance, names.QUARANTINED_EVENTS, names.QUARANTINE_SHARE)
    assert [h.outcome for h in history][:3] == ["passed", "passed", "failed"]
    assert history[1].metadata["accepted_reason"] == "partner export of 4 March, INC-7"


def test_a_run_whose_last_writing_step_is_staging_publishes_what_it_staged(
    pipeline: Pipeline,
) -> None:
    """The snapshot is published by the run's last step that writes the warehouse, whichever
    steps the run selected: here staging alone, then its checks read the writer file."""
    staging_only = dg.define_asset_job(
        "staging_only",
        selection=dg.AssetSelection.assets(*STAGING_ASSET_KEYS),
        partitions_def=pipeline.definitions.resolve_job_def(WINDOW_JOB).partitions_def,
    )
    definitions = dg.Definitions.merge(pipeline.definitions, dg.Definitions(jobs=[staging_only]))
    result = _run(definitions, pipeline.instance, W0, W0, job="staging_only")
    assert result.success
    assert names.BUSINESS_KPI_DAILY not in _materialized(result)
    assert {e.check_name for e in result.get_asset_check_evaluations()} >= {names.QUARANTINE_SHARE}
    assert _published_watermark(pipeline) == W1
