"""Freshness is judged even when the pipeline stopped: the schedule runs the check on its own.

A real Dagster instance and the real Definitions: window W0 is materialized once (by a job that
skips the checks, so no pipeline run has evaluated freshness), then the schedule's ticks decide
and the check-only job it requests evaluates `latest_window_fresh` at the tick's time.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from runhub_pipeline.checks import names
from runhub_pipeline.checks.definitions import CHECK_TIME_TAG
from runhub_pipeline.checks.summary import check_history
from runhub_pipeline.definitions import WINDOW_JOB, build_definitions
from runhub_pipeline.partitions import RANGE_END_TAG, RANGE_START_TAG, partition_key
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import writer_path
from runhub_pipeline.schedules import FRESHNESS_CHECK_JOB, FRESHNESS_SCHEDULE
from runhub_pipeline.settings import Settings
from tests.factories import analytics_event, business_event, insert_rows, project, utc

pytestmark = pytest.mark.slow

W0 = utc("2026-03-04 10:00")
UNCHECKED_JOB = "materialize_without_checks"


@pytest.fixture
def settings(sqlite_app_db: AppDatabase, tmp_path: Path) -> Settings:
    at = utc("2026-03-04 10:01")
    insert_rows(sqlite_app_db, "projects", [project("p1")])
    insert_rows(sqlite_app_db, "business_events", [business_event(1, "p1", "lead_created", at, at)])
    insert_rows(
        sqlite_app_db,
        "inhouse_analytics_events",
        [analytics_event(1, "p1", "page_view", "s1", at, at)],
    )
    return Settings.from_env(
        {
            "RUNHUB_HOME": str(tmp_path / "home"),
            "RUNHUB_APP_DB_URL": sqlite_app_db.url,
            "RUNHUB_PARTITIONS_START": "2026-03-04T00:00Z",
            "RUNHUB_INGEST_LAG": "2m",
        }
    )


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        yield instance


def _with_unchecked_job(definitions: dg.Definitions) -> dg.Definitions:
    unchecked = dg.define_asset_job(
        UNCHECKED_JOB,
        selection=dg.AssetSelection.all() - dg.AssetSelection.all_asset_checks(),
        partitions_def=definitions.resolve_job_def(WINDOW_JOB).partitions_def,
    )
    return dg.Definitions.merge(definitions, dg.Definitions(jobs=[unchecked]))


def test_a_stalled_pipeline_is_flagged_stale_by_the_schedule(
    settings: Settings, instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    definitions = _with_unchecked_job(build_definitions(settings))
    schedule = definitions.resolve_schedule_def(FRESHNESS_SCHEDULE)
    freshness_job = definitions.resolve_job_def(FRESHNESS_CHECK_JOB)

    def tick(at: datetime) -> dg.RunRequest | dg.SkipReason:
        with dg.build_schedule_context(instance=instance, scheduled_execution_time=at) as context:
            result = schedule.evaluate_tick(context)
        if result.skip_message is not None:
            return dg.SkipReason(result.skip_message)
        (request,) = result.run_requests or []
        return request

    def evaluate(request: dg.RunRequest | dg.SkipReason) -> str:
        """Run the requested check-only job; it must not touch the warehouse writer file."""
        assert isinstance(request, dg.RunRequest)
        writer = writer_path(settings.warehouse_path)
        moved = writer.rename(tmp_path / "writer-moved-away.duckdb")
        try:
            result = freshness_job.execute_in_process(instance=instance, tags=request.tags)
            assert result.success
            assert not result.get_asset_materialization_events()
            assert not writer.exists()
        finally:
            moved.rename(writer)
        (latest, *_) = check_history(instance, names.INGEST_LEDGER, names.FRESHNESS)
        assert latest.run_id == result.run_id
        return latest.outcome

    nothing = tick(W0 + timedelta(minutes=20))
    assert isinstance(nothing, dg.SkipReason)
    assert "nothing ingested yet" in (nothing.skip_message or "")

    ingest = definitions.resolve_job_def(UNCHECKED_JOB).execute_in_process(
        instance=instance,
        tags={RANGE_START_TAG: partition_key(W0), RANGE_END_TAG: partition_key(W0)},
    )
    assert ingest.success
    assert check_history(instance, names.INGEST_LEDGER, names.FRESHNESS) == []

    # Recent: W0 ends 10:15, so it is due by 10:32 and the next window by 10:47.
    recent = tick(W0 + timedelta(minutes=25))
    assert isinstance(recent, dg.RunRequest)
    assert recent.run_key == f"{FRESHNESS_SCHEDULE}:2026-03-04T10:25:00+00:00"
    assert recent.tags[CHECK_TIME_TAG] == "2026-03-04T10:25:00+00:00"
    assert evaluate(recent) == "passed"
    held = tick(W0 + timedelta(minutes=45))
    assert isinstance(held, dg.SkipReason)
    assert "fresh until 2026-03-04T10:47:00+00:00" in (held.skip_message or "")

    # No run since: a day later the schedule evaluates again and the check flags it stale.
    stalled = tick(W0 + timedelta(days=1))
    assert isinstance(stalled, dg.RunRequest)
    assert evaluate(stalled) == "warned"
    (latest, *_) = check_history(instance, names.INGEST_LEDGER, names.FRESHNESS)
    assert "not ingested through 2026-03-05 09:30 UTC" in (latest.description or "")
    flagged = tick(W0 + timedelta(days=1, minutes=5))
    assert isinstance(flagged, dg.SkipReason)
    assert "already flagged" in (flagged.skip_message or "")
