"""The schedules: hourly digests, the stuck-run reaper, daily retention, and freshness.

Each tick is keyed by its scheduled time (a repeat of a tick is harmless), passes that time to the
job as its wall clock, and skips with a reason when there is nothing to do.
"""

from datetime import UTC, datetime
from typing import Any

import dagster as dg
import sqlalchemy as sa

from runhub_pipeline.checks import names
from runhub_pipeline.checks.definitions import CHECK_TIME_TAG
from runhub_pipeline.checks.staging_rules import FRESH_UNTIL
from runhub_pipeline.checks.status import latest_completed
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.sends.digest import due_count
from runhub_pipeline.sends.jobs import (
    DAILY_DIGEST_JOB,
    PRUNE_OP,
    PRUNE_SENDS_JOB,
    REAP_OP,
    REAP_RUNS_JOB,
    SEND_DIGESTS_OP,
    clock_config,
)
from runhub_pipeline.sends.policy import CLAIMED, RUNNING, SEND_RETENTION
from runhub_pipeline.sends.stored import db_time, parse_time
from runhub_pipeline.sensors import held_back

DAILY_DIGEST_SCHEDULE = "daily_digest_schedule"
REAPER_SCHEDULE = "workflow_run_reaper_schedule"
RETENTION_SCHEDULE = "workflow_sends_retention_schedule"
FRESHNESS_SCHEDULE = "freshness_check_schedule"
FRESHNESS_CHECK_JOB = "freshness_check_job"


def _tick(context: dg.ScheduleEvaluationContext) -> datetime:
    scheduled = context.scheduled_execution_time
    if scheduled is None:
        raise dg.DagsterInvariantViolationError("a schedule tick has a scheduled time")
    return scheduled


def expired_leases(app_db: AppDatabase, now: datetime) -> int:
    rows = app_db.fetch_all(
        "select lease_expires_at from workflow_runs where status = :running", {"running": RUNNING}
    )
    return sum(
        1 for row in rows if (expires := parse_time(row.lease_expires_at)) is None or expires < now
    )


def sends_past_retention(app_db: AppDatabase, now: datetime) -> bool:
    with app_db.begin() as connection:
        row = connection.execute(
            sa.text(
                "select 1 from workflow_sends where created_at < :cutoff and status <> :claimed"
                " limit 1"
            ),
            {"cutoff": db_time(app_db, now - SEND_RETENTION), "claimed": CLAIMED},
        ).first()
    return row is not None


def build_send_schedules() -> list[dg.ScheduleDefinition]:
    @dg.schedule(
        name=DAILY_DIGEST_SCHEDULE,
        job_name=DAILY_DIGEST_JOB,
        cron_schedule="0 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every hour: the daily digests due (digest_next_at reached).",
    )
    def daily_digest_schedule(
        context: dg.ScheduleEvaluationContext, app_db: AppDatabase
    ) -> dg.RunRequest | dg.SkipReason:
        now = _tick(context)
        holding = held_back(context)
        if holding is not None:
            return dg.SkipReason(holding)
        due = due_count(app_db, now)
        if not due:
            return dg.SkipReason(f"no project's digest is due at {now.isoformat()}")
        return dg.RunRequest(
            run_key=f"{DAILY_DIGEST_SCHEDULE}:{now.isoformat()}",
            run_config=clock_config(SEND_DIGESTS_OP, now),
            tags={"runhub/digests_due": str(due)},
        )

    @dg.schedule(
        name=REAPER_SCHEDULE,
        job_name=REAP_RUNS_JOB,
        cron_schedule="*/15 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every 15 minutes: re-queue runs whose lease expired, fail them after 3.",
    )
    def workflow_run_reaper_schedule(
        context: dg.ScheduleEvaluationContext, app_db: AppDatabase
    ) -> dg.RunRequest | dg.SkipReason:
        now = _tick(context)
        if not expired_leases(app_db, now):
            return dg.SkipReason(f"no running workflow run has an expired lease at {now}")
        return dg.RunRequest(
            run_key=f"{REAPER_SCHEDULE}:{now.isoformat()}",
            run_config=clock_config(REAP_OP, now),
        )

    @dg.schedule(
        name=RETENTION_SCHEDULE,
        job_name=PRUNE_SENDS_JOB,
        cron_schedule="30 3 * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Daily: delete workflow_sends rows older than 90 days.",
    )
    def workflow_sends_retention_schedule(
        context: dg.ScheduleEvaluationContext, app_db: AppDatabase
    ) -> dg.RunRequest | dg.SkipReason:
        now = _tick(context)
        if not sends_past_retention(app_db, now):
            return dg.SkipReason("no workflow_sends row is older than 90 days")
        return dg.RunRequest(
            run_key=f"{RETENTION_SCHEDULE}:{now.date().isoformat()}",
            run_config=clock_config(PRUNE_OP, now),
        )

    return [daily_digest_schedule, workflow_run_reaper_schedule, workflow_sends_retention_schedule]


def _freshness_known(record: Any, now: datetime) -> str | None:
    """Why a freshness evaluation at `now` would tell nothing new, or None when one is due.

    `record` is the latest completed evaluation of `latest_window_fresh`. A pass holds until its
    `fresh_until`; a stale verdict (WARN) holds until a pipeline run, which evaluates the check
    again. An evaluation that could not run (ERROR) is retried.
    """
    if record is None:
        return None
    evaluation: dg.AssetCheckEvaluation = record.evaluation
    if evaluation.passed:
        until = evaluation.metadata.get(FRESH_UNTIL)
        if isinstance(until, dg.TimestampMetadataValue) and until.value > now.timestamp():
            fresh_until = datetime.fromtimestamp(until.value, UTC)
            return f"fresh until {fresh_until.isoformat()} (evaluated in run {record.run_id})"
        return None
    if evaluation.severity == dg.AssetCheckSeverity.WARN:
        return (
            f"already flagged in run {record.run_id}: {evaluation.description}; the next"
            " pipeline run evaluates it again"
        )
    return None


def build_freshness_schedule() -> dg.ScheduleDefinition:
    """Evaluates `ingest_ledger:latest_window_fresh` when no pipeline run has, so a stalled
    pipeline is flagged stale. The check-only run reads the published read-only snapshot."""
    check_key = dg.AssetCheckKey(dg.AssetKey(names.INGEST_LEDGER), names.FRESHNESS)
    job = dg.define_asset_job(
        FRESHNESS_CHECK_JOB,
        selection=dg.AssetSelection.checks(check_key),
        description="Only the freshness check of ingest_ledger, on the read-only warehouse"
        " snapshot: materializes nothing.",
    )

    @dg.schedule(
        name=FRESHNESS_SCHEDULE,
        job=job,
        cron_schedule="*/5 * * * *",
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Every 5 minutes: evaluate latest_window_fresh unless the latest evaluation"
        " still holds (pipeline runs evaluate it too).",
    )
    def freshness_check_schedule(
        context: dg.ScheduleEvaluationContext,
    ) -> dg.RunRequest | dg.SkipReason:
        now = _tick(context)
        instance = context.instance
        if not instance.fetch_materializations(dg.AssetKey(names.INGEST_LEDGER), limit=1).records:
            return dg.SkipReason("nothing ingested yet: no warehouse snapshot to judge")
        known = _freshness_known(latest_completed(instance, check_key), now)
        if known is not None:
            return dg.SkipReason(known)
        return dg.RunRequest(
            run_key=f"{FRESHNESS_SCHEDULE}:{now.isoformat()}",
            tags={CHECK_TIME_TAG: now.isoformat()},
        )

    return freshness_check_schedule
