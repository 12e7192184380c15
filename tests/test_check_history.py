"""Reading a check's execution history page by page, past a range run's planned records."""

from datetime import UTC, datetime

import dagster as dg

from runhub_pipeline.checks.status import execution_records, is_completed, latest_completed
from runhub_pipeline.partitions import RANGE_END_TAG, RANGE_START_TAG, fifteen_minute_partitions

PARTITIONS = fifteen_minute_partitions(datetime(2026, 3, 1, tzinfo=UTC))


@dg.asset(partitions_def=PARTITIONS, backfill_policy=dg.BackfillPolicy.single_run())
def table(context: dg.AssetExecutionContext) -> None:
    if context.run.tags.get("fail"):
        raise RuntimeError("the step fails: its check is planned, never evaluated")


@dg.asset_check(asset=table, blocking=True)
def rows_ok() -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=True)


def _range_run(instance: dg.DagsterInstance, fail: bool) -> dg.ExecuteInProcessResult:
    keys = PARTITIONS.get_partition_keys()[:12]
    return dg.materialize(
        [table, rows_ok],
        instance=instance,
        tags={RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1], **({"fail": "1"} if fail else {})},
        raise_on_error=False,
    )


def test_the_evaluation_is_found_behind_a_later_runs_planned_records() -> None:
    with dg.instance_for_test() as instance:
        assert _range_run(instance, fail=False).success
        assert not _range_run(instance, fail=True).success
        key = rows_ok.check_key
        records = list(execution_records(instance, key, page=3))
        # Each run plans one record per window; only the first run evaluated (one more record).
        assert len(records) == 12 + 1 + 12
        assert len({record.id for record in records}) == len(records)
        assert [is_completed(record) for record in records].index(True) == 12
        found = latest_completed(instance, key)
        assert found is not None and found.evaluation.passed
