"""The send-side schedules: hourly digests, the stuck-run reaper, daily retention.

Each tick is keyed by its scheduled time (a repeat of a tick is harmless), passes that time to the
job as its wall clock, and skips with a reason when there is nothing to do.
"""

from datetime import datetime

import dagster as dg
import sqlalchemy as sa

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
from runhub_pipeline.sends.runs import db_time, parse_time
from runhub_pipeline.sensors import held_back

DAILY_DIGEST_SCHEDULE = "daily_digest_schedule"
REAPER_SCHEDULE = "workflow_run_reaper_schedule"
RETENTION_SCHEDULE = "workflow_sends_retention_schedule"


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
