"""The send-side Dagster jobs: one workflow run, the hourly digests, the reaper and retention.

Each op is a thin shell around a library function of `sends/` that takes the wall clock as a
parameter: the op passes the time it runs at, or the schedule's tick time from its config.
"""

import json
from collections.abc import Callable
from datetime import datetime

import dagster as dg

from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.email import EmailTransport
from runhub_pipeline.resources.warehouse import Warehouse, utc_now
from runhub_pipeline.sends.digest import send_due_digests
from runhub_pipeline.sends.policy import FAILED
from runhub_pipeline.sends.reaper import prune_sends, reap_expired_leases
from runhub_pipeline.sends.runs import execute_run
from runhub_pipeline.settings import Settings, parse_utc

WORKFLOW_SEND_JOB = "workflow_send"
DAILY_DIGEST_JOB = "daily_digest"
REAP_RUNS_JOB = "reap_workflow_runs"
PRUNE_SENDS_JOB = "prune_workflow_sends"
# The Dagster run tag naming the workflow run a `workflow_send` run executes.
WORKFLOW_RUN_TAG = "runhub/workflow_run_id"
EMAIL_RESOURCE = "email"
# Op names, for run config.
SEND_RUN_OP = "send_workflow_run"
SEND_DIGESTS_OP = "send_daily_digests"
REAP_OP = "reap_expired_leases"
PRUNE_OP = "prune_expired_sends"


class WorkflowRunConfig(dg.Config):
    run_id: str


class ClockConfig(dg.Config):
    """`now` (ISO-8601) is the schedule tick the job stands for; empty means the time it runs."""

    now: str = ""


def _now(config: ClockConfig, clock: Callable[[], datetime]) -> datetime:
    return parse_utc(config.now) if config.now else clock()


def workflow_run_config(run_id: str) -> dict[str, object]:
    return {"ops": {SEND_RUN_OP: {"config": {"run_id": run_id}}}}


def clock_config(op_name: str, now: datetime) -> dict[str, object]:
    return {"ops": {op_name: {"config": {"now": now.isoformat()}}}}


def build_send_jobs(
    settings: Settings, clock: Callable[[], datetime] = utc_now
) -> list[dg.JobDefinition]:
    """The jobs; `settings` supplies the sender address and the unsubscribe base URL, `clock`
    the wall clock (tests fix it)."""

    @dg.op(name=SEND_RUN_OP, tags={"kind": "email"})
    def send_workflow_run(
        context: dg.OpExecutionContext,
        config: WorkflowRunConfig,
        app_db: AppDatabase,
        warehouse: Warehouse,
        email: EmailTransport,
    ) -> None:
        """Start one queued workflow run, mail its recipients exactly once, record the result."""
        report = execute_run(
            app_db, warehouse, email, settings, config.run_id, clock(), owner=context.run_id
        )
        if report.status is None:
            context.log.info(f"workflow run {config.run_id} not executed: {report.note}")
            return
        context.log.info(f"workflow run {config.run_id}: {json.dumps(report.result)}")
        if report.status == FAILED:
            raise dg.Failure(description=f"workflow run {config.run_id} failed: {report.note}")

    @dg.op(name=SEND_DIGESTS_OP, tags={"kind": "email"})
    def send_daily_digests(
        context: dg.OpExecutionContext,
        config: ClockConfig,
        app_db: AppDatabase,
        warehouse: Warehouse,
        email: EmailTransport,
    ) -> None:
        """Send every daily digest that is due (CONTRACT §7)."""
        report = send_due_digests(app_db, warehouse, email, settings, _now(config, clock))
        sent = sum(report.sent.values())
        context.log.info(
            f"digests sent {sent}, failed {len(report.failed)} ({len(report.retrying)} to be"
            f" retried), already done {len(report.already_done)}, interrupted rows ended"
            f" {report.interrupted}"
        )

    @dg.op(name=REAP_OP)
    def reap(context: dg.OpExecutionContext, config: ClockConfig, app_db: AppDatabase) -> None:
        """Re-queue workflow runs whose lease expired; fail them after the last attempt."""
        report = reap_expired_leases(app_db, _now(config, clock))
        context.log.info(f"re-queued {report.requeued}, failed {report.failed}")

    @dg.op(name=PRUNE_OP)
    def prune(context: dg.OpExecutionContext, config: ClockConfig, app_db: AppDatabase) -> None:
        """Delete workflow_sends rows past their retention."""
        context.log.info(f"pruned {prune_sends(app_db, _now(config, clock))} workflow_sends rows")

    @dg.job(name=WORKFLOW_SEND_JOB, description="Execute one workflow run (CONTRACT §7).")
    def workflow_send() -> None:
        send_workflow_run()

    @dg.job(name=DAILY_DIGEST_JOB, description="Send the daily digests that are due.")
    def daily_digest() -> None:
        send_daily_digests()

    @dg.job(name=REAP_RUNS_JOB, description="Re-queue or fail runs whose lease expired.")
    def reap_workflow_runs() -> None:
        reap()

    @dg.job(name=PRUNE_SENDS_JOB, description="Retention of workflow_sends (90 days).")
    def prune_workflow_sends() -> None:
        prune()

    return [workflow_send, daily_digest, reap_workflow_runs, prune_workflow_sends]
