"""The send-side sensors (CONTRACT §7) and `run_send_sensors_once` for the CLI.

- `abandoned_checkout_sensor` queues a `recover_abandoned` run for each project with automatic
  recovery on and checkouts abandoned in the last 24 hours (so switching it on never mails a
  backlog) that appeared since its last run, unless a run is in its 60-minute cooldown.
- `workflow_runs_sensor` launches a `workflow_send` run for each queued workflow run (inserted by
  the app, by the sensor above, or re-queued by the reaper) and fails a queued run whose action or
  params are malformed, with the reason on its row.

A tick reads the warehouse only through its published read-only snapshot and costs a fixed
number of set-based queries whatever the number of projects. While a blocking data-quality check
of the latest data has failed (or not finished), both sensors hold back and say why.
"""

import contextlib
import json
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
import sqlalchemy as sa

from runhub_pipeline.checks.status import CheckGate, blocking_checks_gate
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.email import EmailTransport
from runhub_pipeline.resources.warehouse import Warehouse, WarehouseNotBuiltError, utc_now
from runhub_pipeline.sends.digest import send_due_digests
from runhub_pipeline.sends.jobs import WORKFLOW_RUN_TAG, WORKFLOW_SEND_JOB, workflow_run_config
from runhub_pipeline.sends.lifecycle import fail_queued_run
from runhub_pipeline.sends.policy import (
    AUTO_RUN_SLOT,
    FAIL_DELIVERY,
    FAILED,
    QUEUED,
    RECOVER_ABANDONED,
    RECOVERY_WINDOW,
    RUN_COOLDOWNS,
    SKIP_TRANSPORT_DOWN,
    InvalidRunError,
    parse_params,
)
from runhub_pipeline.sends.recipients import abandoned_by_project
from runhub_pipeline.sends.runs import execute_run
from runhub_pipeline.sends.stored import (
    coarse_since,
    db_time,
    iso,
    parse_flag,
    parse_json,
    parse_time,
)
from runhub_pipeline.settings import Settings
from runhub_pipeline.watermark import current_watermark

ABANDONED_CHECKOUT_SENSOR = "abandoned_checkout_sensor"
WORKFLOW_RUNS_SENSOR = "workflow_runs_sensor"
SENSOR_INTERVAL_SECONDS = 30
# Launches per tick; the rest wait for the next tick.
MAX_LAUNCHES_PER_TICK = 100
# Auto-recovery run ids derive from (project, idempotency key): a repeated tick inserts nothing.
_AUTO_RUN_NAMESPACE = uuid.UUID("5b0f8c1e-4d7a-4f5e-9a44-2f0b7c3d9e61")
_IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


@dataclass(frozen=True)
class QueuedRun:
    run_id: str
    attempts: int


@dataclass(frozen=True)
class RecoveryTick:
    created: list[str]
    reason: str


def _slot(now: datetime) -> str:
    """The 15-minute slot of `now` (auto runs and launch keys repeat harmlessly within it)."""
    seconds = int(AUTO_RUN_SLOT.total_seconds())
    start = datetime.fromtimestamp(int(now.timestamp()) // seconds * seconds, tz=now.tzinfo)
    return start.strftime("%Y-%m-%dT%H:%MZ")


def auto_run_id(project_id: str, idempotency_key: str) -> str:
    return str(uuid.uuid5(_AUTO_RUN_NAMESPACE, f"{project_id}\n{idempotency_key}"))


def _recent_recovery_runs(app_db: AppDatabase, now: datetime) -> dict[str, list[sa.Row[object]]]:
    rows = app_db.fetch_all(
        "select id, project_id, status, created_at, params, result from workflow_runs"
        " where action_id = :action and created_at >= :since",
        {"action": RECOVER_ABANDONED, "since": coarse_since(app_db, now - RECOVERY_WINDOW)},
    )
    by_project: dict[str, list[sa.Row[object]]] = {}
    for row in rows:
        by_project.setdefault(str(row.project_id), []).append(row)
    return by_project


def _counted(result: dict[str, object], field: str, reason: str) -> bool:
    counts = result.get(field)
    return isinstance(counts, dict) and bool(counts.get(reason))


def _needs_run(
    runs: Sequence[sa.Row[object]], newest_visible_at: datetime, now: datetime
) -> str | None:
    """None when the project needs a new recovery run, else why not."""
    live = [
        (created, run)
        for run in runs
        if run.status != FAILED and (created := parse_time(run.created_at)) is not None
    ]
    cooldown = RUN_COOLDOWNS[RECOVER_ABANDONED]
    if any(created >= now - cooldown for created, _ in live):
        return f"a run in the last {int(cooldown.total_seconds() // 60)} minutes"
    if not live:
        return None
    _, last = max(live, key=lambda item: item[0])
    result = parse_json(last.result)
    covered = parse_time(result.get("as_of") or parse_json(last.params).get("as_of"))
    # Recipients a dead mail server kept from their mail are retried by the next run.
    retry = _counted(result, "failure_reasons", FAIL_DELIVERY) or _counted(
        result, "skipped", SKIP_TRANSPORT_DOWN
    )
    if covered is not None and newest_visible_at < covered and not retry:
        return "nothing abandoned since the last run"
    return None


def enqueue_recovery_runs(app_db: AppDatabase, warehouse: Warehouse, now: datetime) -> RecoveryTick:
    """Queue the auto-recovery runs due at `now`; a repeat within the same slot inserts nothing."""
    try:
        with warehouse.reader() as connection:
            as_of = current_watermark(connection)
            abandoned = abandoned_by_project(connection, now) if as_of is not None else {}
    except WarehouseNotBuiltError:
        return RecoveryTick([], "the warehouse is not built yet")
    if not abandoned:
        return RecoveryTick([], "no checkout abandoned in the last 24 hours")
    enabled = {
        str(row.project_id)
        for row in app_db.fetch_all("select project_id, auto_recover_abandoned from projects")
        if parse_flag(row.auto_recover_abandoned)
    }
    recent = _recent_recovery_runs(app_db, now)
    why_not: Counter[str] = Counter()
    new_runs = []
    key = f"auto:{RECOVER_ABANDONED}:{_slot(now)}"
    for project_id, summary in sorted(abandoned.items()):
        if project_id not in enabled:
            why_not["automatic recovery off"] += 1
            continue
        reason = _needs_run(recent.get(project_id, []), summary.newest_visible_at, now)
        if reason is not None:
            why_not[reason] += 1
            continue
        new_runs.append(
            {
                "id": auto_run_id(project_id, key),
                "project_id": project_id,
                "action_id": RECOVER_ABANDONED,
                "status": QUEUED,
                "key": key,
                "params": json.dumps({"auto": True, "as_of": iso(as_of)}),
                "now": db_time(app_db, now),
            }
        )
    created: list[str] = []
    if new_runs:
        # One batch; a run whose id or key exists already (a failed run of this slot, or a
        # concurrent tick) is left alone, and only queued runs are reported for launch.
        with app_db.begin() as connection:
            connection.execute(
                sa.text(
                    "insert into workflow_runs"
                    " (id, project_id, action_id, status, idempotency_key, params, attempts,"
                    " created_at)"
                    " values (:id, :project_id, :action_id, :status, :key, :params, 0, :now)"
                    " on conflict do nothing"
                ),
                new_runs,
            )
            queued = connection.execute(
                sa.text(
                    "select id from workflow_runs where idempotency_key = :key and status = :queued"
                ),
                {"key": key, "queued": QUEUED},
            )
            wanted = {str(run["id"]) for run in new_runs}
            created = sorted(str(row.id) for row in queued if str(row.id) in wanted)
    summary_text = ", ".join(f"{count} {why}" for why, count in sorted(why_not.items()))
    return RecoveryTick(
        created, f"{len(abandoned)} projects with checkouts abandoned in 24 hours: {summary_text}"
    )


def launchable_runs(
    app_db: AppDatabase, now: datetime, limit: int | None = None
) -> list[QueuedRun]:
    """Queued runs to launch, oldest first; a run with an unknown action or malformed params is
    failed here with the reason on its row, so that the app sees why."""
    rows = app_db.fetch_all(
        "select id, action_id, attempts, params from workflow_runs where status = :queued"
        " order by created_at, id",
        {"queued": QUEUED},
    )
    runs: list[QueuedRun] = []
    for row in rows:
        try:
            parse_params(row.action_id, row.params)
        except InvalidRunError as error:
            fail_queued_run(app_db, row.id, str(error), now)
            continue
        runs.append(QueuedRun(str(row.id), int(row.attempts or 0)))
        if limit is not None and len(runs) >= limit:
            break
    return runs


def launch_request(run: QueuedRun, now: datetime) -> dg.RunRequest:
    """A `workflow_send` run request; its key repeats within a 15-minute slot and an attempt."""
    return dg.RunRequest(
        run_key=f"workflow_run:{run.run_id}:attempt{run.attempts}:{_slot(now)}",
        job_name=WORKFLOW_SEND_JOB,
        run_config=workflow_run_config(run.run_id),
        tags={WORKFLOW_RUN_TAG: run.run_id},
    )


def _in_flight(instance: dg.DagsterInstance) -> set[str]:
    """Workflow runs a Dagster run is already queued or running for (one instance query)."""
    runs = instance.get_runs(filters=dg.RunsFilter(job_name=WORKFLOW_SEND_JOB, statuses=_IN_FLIGHT))
    return {run.tags[WORKFLOW_RUN_TAG] for run in runs if WORKFLOW_RUN_TAG in run.tags}


def held_back(
    context: dg.SensorEvaluationContext | dg.ScheduleEvaluationContext,
) -> str | None:
    """Why sends must wait for the data-quality checks, or None (CONTRACT §1: a blocking
    failure holds back what depends on the data). Without repository (a bare test context)
    there are no checks to ask."""
    try:
        definitions = context.repository_def
    except dg.DagsterInvariantViolationError:
        definitions = None
    if definitions is None:
        return None
    gate = blocking_checks_gate(context.instance, definitions)
    return None if gate.ok else f"held back: {gate.reason()}"


def run_send_sensors_once(
    app_db: AppDatabase,
    warehouse: Warehouse,
    transport: EmailTransport,
    settings: Settings,
    now: datetime,
    gate: CheckGate | None = None,
) -> dict[tuple[str, str], int]:
    """Evaluate the send sensors (and the digest schedule) once at `now` and execute what they
    would launch, in this process. Returns e-mails sent by (action, locale).

    `gate` is the blocking-checks verdict of the caller's Dagster instance (see
    `checks.status.blocking_checks_gate`); when it is not ok, nothing is sent.
    """
    sent: Counter[tuple[str, str]] = Counter()
    if gate is not None and not gate.ok:
        return {}
    enqueue_recovery_runs(app_db, warehouse, now)
    for run in launchable_runs(app_db, now):
        try:
            report = execute_run(app_db, warehouse, transport, settings, run.run_id, now)
        except Exception:  # recorded on the run row; the other runs still go
            continue
        if report.sent_now:
            sent[(report.action, report.locale)] += report.sent_now
    with contextlib.suppress(WarehouseNotBuiltError):
        sent.update(send_due_digests(app_db, warehouse, transport, settings, now).sent)
    return dict(sent)


SendTick = Callable[
    [dg.SensorEvaluationContext, AppDatabase, Warehouse, datetime],
    dg.SensorResult | dg.SkipReason,
]


def _send_sensor(
    name: str, description: str, clock: Callable[[], datetime]
) -> Callable[[SendTick], dg.SensorDefinition]:
    """Make a send sensor of a tick: the sensor reads `clock()`, skips with the reason while a
    blocking data-quality check holds sends back (`held_back`), and otherwise runs the tick."""

    def decorate(tick: SendTick) -> dg.SensorDefinition:
        @dg.sensor(
            name=name,
            job_name=WORKFLOW_SEND_JOB,
            minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=description,
        )
        def send_sensor(
            context: dg.SensorEvaluationContext, app_db: AppDatabase, warehouse: Warehouse
        ) -> dg.SensorResult | dg.SkipReason:
            now = clock()
            holding = held_back(context)
            if holding is not None:
                return dg.SkipReason(holding)
            return tick(context, app_db, warehouse, now)

        return send_sensor

    return decorate


def build_send_sensors(clock: Callable[[], datetime] = utc_now) -> list[dg.SensorDefinition]:
    """The two sensors; `clock` is the wall clock (tests fix it)."""

    @_send_sensor(
        ABANDONED_CHECKOUT_SENSOR,
        "Queues a recover_abandoned run per project with automatic recovery on and"
        " checkouts abandoned in the last 24 hours since its last run (CONTRACT §7).",
        clock,
    )
    def abandoned_checkout_sensor(
        context: dg.SensorEvaluationContext,
        app_db: AppDatabase,
        warehouse: Warehouse,
        now: datetime,
    ) -> dg.SensorResult | dg.SkipReason:
        tick = enqueue_recovery_runs(app_db, warehouse, now)
        if not tick.created:
            return dg.SkipReason(f"no recovery run queued: {tick.reason}")
        in_flight = _in_flight(context.instance)
        requests = [
            launch_request(QueuedRun(run_id, 0), now)
            for run_id in tick.created
            if run_id not in in_flight
        ]
        return dg.SensorResult(run_requests=requests)

    @_send_sensor(
        WORKFLOW_RUNS_SENSOR,
        "Launches a workflow_send run for each queued workflow run (send_promo,"
        " onboard_users, post_update, recover_abandoned, re-queued runs).",
        clock,
    )
    def workflow_runs_sensor(
        context: dg.SensorEvaluationContext,
        app_db: AppDatabase,
        warehouse: Warehouse,
        now: datetime,
    ) -> dg.SensorResult | dg.SkipReason:
        if not warehouse.published_path.exists():
            return dg.SkipReason("the warehouse is not built yet: queued workflow runs wait")
        queued = launchable_runs(app_db, now)
        if not queued:
            return dg.SkipReason("no queued workflow run")
        in_flight = _in_flight(context.instance)
        waiting = [run for run in queued if run.run_id not in in_flight]
        if not waiting:
            return dg.SkipReason(f"all {len(queued)} queued workflow runs are already launched")
        requests = [launch_request(run, now) for run in waiting[:MAX_LAUNCHES_PER_TICK]]
        return dg.SensorResult(run_requests=requests)

    return [abandoned_checkout_sensor, workflow_runs_sensor]
