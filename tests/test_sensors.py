"""Sensors, schedules and jobs (issue 5 items 1 and 6): run keys that make repeats harmless,
skip reasons that say why, a 24-hour window that never mails a backlog, set-based ticks that
never open the warehouse for writing, the ingest sensor's re-read of a late window, and
`run_send_sensors_once` for the CLI."""

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import sqlalchemy as sa

import runhub_pipeline.ingest_sensor
from runhub_pipeline.checks.status import blocking_checks_gate
from runhub_pipeline.definitions import WINDOW_JOB, build_definitions
from runhub_pipeline.ingest_sensor import INGEST_SENSOR, build_ingest_sensor
from runhub_pipeline.partitions import RANGE_END_TAG, RANGE_START_TAG
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import Warehouse, writer_path
from runhub_pipeline.schedules import build_send_schedules
from runhub_pipeline.sends.jobs import (
    WORKFLOW_RUN_TAG,
    WORKFLOW_SEND_JOB,
    build_send_jobs,
    workflow_run_config,
)
from runhub_pipeline.sends.runs import execute_run
from runhub_pipeline.sensors import (
    MAX_LAUNCHES_PER_TICK,
    auto_run_id,
    build_send_sensors,
    enqueue_recovery_runs,
    launchable_runs,
    run_send_sensors_once,
)
from runhub_pipeline.settings import WINDOW, Settings
from tests.factories import (
    analytics_event,
    business_event,
    ingest_and_stage,
    insert_rows,
    project,
    stored,
)
from tests.test_sends_runs import (  # noqa: F401 - release_connections: autouse fixture
    NOW,
    WATERMARK,
    build_warehouse,
    checkout,
    outbox,
    outbox_recipients,
    queue_run,
    release_connections,
    result_of,
    run_row,
    settings_for,
    staged,
)

SLOT_KEY = "auto:recover_abandoned:2026-03-30T12:00Z"


def seed(app_db: AppDatabase, tmp_path: Path, watermark: Any = WATERMARK) -> Warehouse:
    """p1 recovers automatically and has two abandoned checkouts in the window; p2 does not
    recover automatically; p3 switched it on with only a backlog older than 24 hours."""
    insert_rows(
        app_db,
        "projects",
        [
            project("p1", auto_recover_abandoned=True, locale="fr"),
            project("p2", auto_recover_abandoned=False),
            project("p3", auto_recover_abandoned=True),
        ],
    )
    return build_warehouse(
        tmp_path / "warehouse.duckdb",
        watermark=watermark,
        checkouts=[
            checkout(1, "p1", "a@x.com", NOW - timedelta(hours=2)),
            checkout(2, "p1", "b@x.com", NOW - timedelta(hours=20)),
            checkout(3, "p2", "a@x.com", NOW - timedelta(hours=2)),
            checkout(4, "p3", "old@x.com", NOW - timedelta(hours=25)),
            checkout(5, "p3", "older@x.com", NOW - timedelta(days=9)),
        ],
    )


def sensors_at(now: Any) -> dict[str, dg.SensorDefinition]:
    return {sensor.name: sensor for sensor in build_send_sensors(clock=lambda: now)}


def evaluate(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, **resources: Any
) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as persistent:
        yield persistent


def test_abandoned_checkout_sensor_queues_once_per_cooldown(
    app_db: AppDatabase, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    warehouse = seed(app_db, tmp_path)
    sensor = sensors_at(NOW)["abandoned_checkout_sensor"]

    result = evaluate(sensor, instance, app_db=app_db, warehouse=warehouse)
    assert isinstance(result, dg.SensorResult)
    [request] = result.run_requests or []
    run_id = auto_run_id("p1", SLOT_KEY)
    assert request.run_key == f"workflow_run:{run_id}:attempt0:2026-03-30T12:00Z"
    assert request.job_name == WORKFLOW_SEND_JOB
    assert request.tags[WORKFLOW_RUN_TAG] == run_id
    row = run_row(app_db, run_id)
    assert (row.project_id, row.action_id, row.status, row.idempotency_key, row.attempts) == (
        "p1",
        "recover_abandoned",
        "queued",
        SLOT_KEY,
        0,
    )
    params = row.params if isinstance(row.params, dict) else json.loads(row.params)
    assert params == {"auto": True, "as_of": WATERMARK.isoformat()}

    # The same tick again, or any tick within the next 60 minutes: nothing new.
    for later in (NOW, NOW + timedelta(minutes=59)):
        again = evaluate(
            sensors_at(later)["abandoned_checkout_sensor"],
            instance,
            app_db=app_db,
            warehouse=warehouse,
        )
        assert isinstance(again, dg.SkipReason)
        assert again.skip_message == (
            "no recovery run queued: 2 projects with checkouts abandoned in 24 hours:"
            " 1 a run in the last 60 minutes, 1 automatic recovery off"
        )
    assert len(app_db.fetch_all("select id from workflow_runs")) == 1


def test_switching_recovery_on_never_mails_the_backlog(app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = seed(app_db, tmp_path)
    tick = enqueue_recovery_runs(app_db, warehouse, NOW)
    assert [run_row(app_db, run_id).project_id for run_id in tick.created] == ["p1"]
    assert app_db.fetch_all("select id from workflow_runs where project_id = 'p3'") == []


def test_a_new_run_only_for_checkouts_abandoned_since_the_last_one(
    app_db: AppDatabase, tmp_path: Path
) -> None:
    warehouse = seed(app_db, tmp_path)
    settings = settings_for(app_db, tmp_path)
    [first] = enqueue_recovery_runs(app_db, warehouse, NOW).created
    execute_run(app_db, warehouse, outbox(tmp_path), settings, first, NOW)
    assert result_of(app_db, first)["as_of"] == WATERMARK.isoformat()

    later = NOW + timedelta(minutes=75)
    tick = enqueue_recovery_runs(app_db, warehouse, later)
    assert tick.created == [] and "1 nothing abandoned since the last run" in tick.reason

    # The next ingest brings a checkout abandoned since: a new run after the cooldown.
    newer = build_warehouse(
        tmp_path / "warehouse.duckdb",
        watermark=later - timedelta(minutes=5),
        checkouts=[
            checkout(1, "p1", "a@x.com", NOW - timedelta(hours=2)),
            checkout(6, "p1", "c@x.com", NOW + timedelta(minutes=10)),
        ],
    )
    [second] = enqueue_recovery_runs(app_db, newer, later).created
    report = execute_run(app_db, newer, outbox(tmp_path), settings, second, later)
    assert report.sent_now == 1
    assert result_of(app_db, second)["skipped"] == {"recently_emailed": 1}
    assert outbox_recipients(tmp_path / "outbox") == {"a@x.com": 1, "b@x.com": 1, "c@x.com": 1}


def test_a_failed_run_is_retried_by_the_next_slot(app_db: AppDatabase, tmp_path: Path) -> None:
    warehouse = seed(app_db, tmp_path)
    [first] = enqueue_recovery_runs(app_db, warehouse, NOW).created
    app_db.execute("update workflow_runs set status = 'failed' where id = :id", {"id": first})
    assert enqueue_recovery_runs(app_db, warehouse, NOW).created == []  # same slot, same key
    [retry] = enqueue_recovery_runs(app_db, warehouse, NOW + timedelta(minutes=15)).created
    assert retry != first


def test_workflow_runs_sensor_launches_queued_runs_and_fails_malformed_ones(
    app_db: AppDatabase, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    insert_rows(app_db, "projects", [project("p1")])
    sensor = sensors_at(NOW)["workflow_runs_sensor"]
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    queue_run(app_db, "early", "p1", "send_promo", created_at=NOW - timedelta(minutes=4))
    unbuilt = evaluate(sensor, instance, app_db=app_db, warehouse=warehouse)
    assert isinstance(unbuilt, dg.SkipReason)
    assert unbuilt.skip_message == "the warehouse is not built yet: queued workflow runs wait"
    app_db.execute("delete from workflow_runs")
    build_warehouse(tmp_path / "warehouse.duckdb")
    skipped = evaluate(sensor, instance, app_db=app_db, warehouse=warehouse)
    assert isinstance(skipped, dg.SkipReason) and skipped.skip_message == "no queued workflow run"

    queue_run(app_db, "promo", "p1", "send_promo", created_at=NOW - timedelta(minutes=3))
    queue_run(app_db, "update", "p1", "send_promo", {"isUpdate": True}, NOW - timedelta(minutes=2))
    queue_run(app_db, "onboard", "p1", "onboard_users", created_at=NOW - timedelta(minutes=1))
    queue_run(app_db, "bogus", "p1", "post_update")
    queue_run(app_db, "done", "p1", "send_promo", status="succeeded")

    result = evaluate(sensor, instance, app_db=app_db, warehouse=warehouse)
    assert isinstance(result, dg.SensorResult)
    keys = [request.run_key for request in result.run_requests or []]
    assert keys == [
        f"workflow_run:{run_id}:attempt0:2026-03-30T12:00Z"
        for run_id in ("promo", "update", "onboard")
    ]
    bogus = run_row(app_db, "bogus")
    assert bogus.status == "failed" and bogus.error.startswith("unknown action 'post_update'")

    # A run already launched (queued in Dagster) is not launched twice.
    job = build_send_jobs(settings_for(app_db, tmp_path))[0]
    instance.create_run_for_job(
        job,
        run_config=workflow_run_config("promo"),
        tags={WORKFLOW_RUN_TAG: "promo"},
        status=dg.DagsterRunStatus.NOT_STARTED,
    )
    result = evaluate(sensor, instance, app_db=app_db, warehouse=warehouse)
    assert isinstance(result, dg.SensorResult)
    assert [r.tags[WORKFLOW_RUN_TAG] for r in result.run_requests or []] == ["update", "onboard"]


def test_the_workflow_send_job_executes_a_sensor_request(
    app_db: AppDatabase, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    warehouse = seed(app_db, tmp_path)
    result = evaluate(
        sensors_at(NOW)["abandoned_checkout_sensor"], instance, app_db=app_db, warehouse=warehouse
    )
    assert isinstance(result, dg.SensorResult)
    [request] = result.run_requests or []
    jobs = {job.name: job for job in build_send_jobs(settings_for(app_db, tmp_path), lambda: NOW)}
    resources = {"app_db": app_db, "warehouse": warehouse, "email": outbox(tmp_path)}
    outcome = jobs[WORKFLOW_SEND_JOB].execute_in_process(
        run_config=request.run_config, instance=instance, resources=resources, tags=request.tags
    )
    assert outcome.success
    run_id = request.tags[WORKFLOW_RUN_TAG]
    assert run_row(app_db, run_id).status == "succeeded"
    assert run_row(app_db, run_id).lease_owner == outcome.run_id
    assert outbox_recipients(tmp_path / "outbox") == {"a@x.com": 1, "b@x.com": 1}

    # A duplicate launch of the same workflow run is a harmless no-op.
    again = jobs[WORKFLOW_SEND_JOB].execute_in_process(
        run_config=request.run_config, instance=instance, resources=resources
    )
    assert again.success and sum(outbox_recipients(tmp_path / "outbox").values()) == 2


def test_a_failed_workflow_run_fails_its_dagster_run(
    app_db: AppDatabase, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    warehouse = seed(app_db, tmp_path)
    queue_run(app_db, "bad", "p1", "send_promo", {"isUpdate": "yes"})
    jobs = {job.name: job for job in build_send_jobs(settings_for(app_db, tmp_path), lambda: NOW)}
    outcome = jobs[WORKFLOW_SEND_JOB].execute_in_process(
        run_config={"ops": {"send_workflow_run": {"config": {"run_id": "bad"}}}},
        instance=instance,
        resources={"app_db": app_db, "warehouse": warehouse, "email": outbox(tmp_path)},
        raise_on_error=False,
    )
    assert not outcome.success
    assert run_row(app_db, "bad").error.startswith("malformed params: isUpdate")


def test_schedules_key_their_ticks_and_say_why_they_skip(
    app_db: AppDatabase, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    schedules = {schedule.name: schedule for schedule in build_send_schedules()}

    def tick(name: str, at: Any) -> dg.RunRequest | dg.SkipReason:
        with dg.build_schedule_context(
            instance=instance, scheduled_execution_time=at, resources={"app_db": app_db}
        ) as context:
            result = schedules[name](context)
        assert isinstance(result, dg.RunRequest | dg.SkipReason)
        return result

    digest = tick("daily_digest_schedule", NOW)
    assert isinstance(digest, dg.SkipReason) and "no project's digest is due" in (
        digest.skip_message or ""
    )
    insert_rows(app_db, "projects", [project("p1", digest_next_at=NOW - timedelta(minutes=5))])
    due = tick("daily_digest_schedule", NOW)
    assert isinstance(due, dg.RunRequest)
    assert due.run_key == "daily_digest_schedule:2026-03-30T12:00:00+00:00"
    assert due.run_config == {"ops": {"send_daily_digests": {"config": {"now": NOW.isoformat()}}}}

    reaper = tick("workflow_run_reaper_schedule", NOW)
    assert isinstance(reaper, dg.SkipReason) and "no running workflow run" in (
        reaper.skip_message or ""
    )
    queue_run(app_db, "stuck", "p1", "send_promo", status="running", attempts=1)
    app_db.execute(
        "update workflow_runs set lease_expires_at = :e", {"e": stored(app_db, NOW - timedelta(1))}
    )
    reap = tick("workflow_run_reaper_schedule", NOW)
    assert isinstance(reap, dg.RunRequest) and str(reap.run_key).endswith(NOW.isoformat())

    retention = tick("workflow_sends_retention_schedule", NOW)
    assert isinstance(retention, dg.SkipReason)
    insert_rows(
        app_db,
        "workflow_sends",
        [
            {
                "project_id": "p1",
                "run_id": "r",
                "email": "a@x.com",
                "status": "sent",
                "idempotency_key": "workflow:r:a@x.com",
                "created_at": NOW - timedelta(days=100),
            }
        ],
    )
    prune = tick("workflow_sends_retention_schedule", NOW)
    assert isinstance(prune, dg.RunRequest) and str(prune.run_key).endswith("2026-03-30")

    # The scheduled jobs run with the tick's time.
    jobs = {job.name: job for job in build_send_jobs(settings_for(app_db, tmp_path))}
    warehouse = build_warehouse(tmp_path / "warehouse.duckdb")
    resources = {"app_db": app_db, "warehouse": warehouse, "email": outbox(tmp_path)}
    for name, request in (
        ("daily_digest", due),
        ("reap_workflow_runs", reap),
        ("prune_workflow_sends", prune),
    ):
        assert (
            jobs[name]
            .execute_in_process(
                run_config=request.run_config, instance=instance, resources=resources
            )
            .success
        )
    assert app_db.fetch_all("select status from inhouse_emails")[0].status == "sent"
    assert run_row(app_db, "stuck").status == "queued"
    assert app_db.fetch_all("select * from workflow_sends") == []


def test_run_send_sensors_once_reports_sends_by_action_and_locale(
    app_db: AppDatabase, tmp_path: Path
) -> None:
    seed(app_db, tmp_path)
    warehouse = build_warehouse(
        tmp_path / "warehouse.duckdb",
        events=[staged(100, "p2", "lead_created", NOW - timedelta(days=1), "lead@x.com")],
        checkouts=[
            checkout(1, "p1", "a@x.com", NOW - timedelta(hours=2)),
            checkout(2, "p1", "b@x.com", NOW - timedelta(hours=20)),
        ],
    )
    queue_run(app_db, "update", "p2", "send_promo", {"isUpdate": True, "locale": "de-AT"})
    counts = run_send_sensors_once(
        app_db, warehouse, outbox(tmp_path), settings_for(app_db, tmp_path), NOW
    )
    assert counts == {
        ("recover_abandoned", "fr"): 2,
        ("post_update", "de"): 1,
        ("daily_digest", "fr"): 1,
        ("daily_digest", "en"): 2,
    }
    assert sum(outbox_recipients(tmp_path / "outbox").values()) == 6
    # Once more at the same time: nothing is sent twice.
    again = run_send_sensors_once(
        app_db, warehouse, outbox(tmp_path), settings_for(app_db, tmp_path), NOW
    )
    assert again == {}


# Holds every given DuckDB file open read-only until its stdin closes.
HOLDER = textwrap.dedent(
    """
    import sys, duckdb
    connections = [duckdb.connect(path, read_only=True) for path in sys.argv[1:]]
    print("holding", flush=True)
    sys.stdin.read()
    """
)


@contextmanager
def no_warehouse_writes(*warehouses: Warehouse) -> Iterator[None]:
    """Another process holds each published snapshot and writer file open read-only (as an
    analyst holds the snapshot), so DuckDB refuses any read-write open of them,
    `Warehouse.writer()` included, while read-only opens go on working."""
    paths = [
        str(path) for w in warehouses for path in (w.published_path, writer_path(w.published_path))
    ]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, *paths],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        for warehouse in warehouses:  # the trap is armed: no writer can open now
            with pytest.raises(duckdb.IOException, match="Could not set lock"), warehouse.writer():
                pass
        yield
    finally:
        _, errors = holder.communicate(input="", timeout=30)
    assert holder.returncode == 0, errors


def test_ticks_are_set_based_and_read_only(
    app_db: AppDatabase, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """The number of app-database statements of a tick does not grow with the projects, and no
    sensor tick opens the warehouse for writing (it would fail under `no_warehouse_writes`)."""
    settings = settings_for(app_db, tmp_path)
    sizes = (3, 300)
    warehouses = {
        projects: build_warehouse(
            tmp_path / f"projects-{projects}" / "warehouse.duckdb",
            checkouts=[
                checkout(i, f"q{i:05d}", "a@x.com", NOW - timedelta(hours=2))
                for i in range(projects)
            ],
        )
        for projects in sizes
    }

    def statements_of_a_tick(projects: int) -> int:
        app_db.execute("delete from projects")
        app_db.execute("delete from workflow_runs")
        insert_rows(
            app_db,
            "projects",
            [project(f"q{i:05d}", auto_recover_abandoned=True) for i in range(projects)],
        )
        warehouse = warehouses[projects]
        count = 0

        def counter(*_: Any) -> None:
            nonlocal count
            count += 1

        sa.event.listen(app_db.engine, "before_cursor_execute", counter)
        try:
            created = enqueue_recovery_runs(app_db, warehouse, NOW).created
            launchable_runs(app_db, NOW)
        finally:
            sa.event.remove(app_db.engine, "before_cursor_execute", counter)
        assert len(created) == projects
        # The sensors themselves, one tick each (the runs above are queued by now).
        resources = {"app_db": app_db, "warehouse": warehouse}
        send_sensors = sensors_at(NOW + timedelta(minutes=1))
        launched = evaluate(send_sensors["workflow_runs_sensor"], instance, **resources)
        assert isinstance(launched, dg.SensorResult)
        assert len(launched.run_requests or []) == min(projects, MAX_LAUNCHES_PER_TICK)
        cooling = evaluate(send_sensors["abandoned_checkout_sensor"], instance, **resources)
        assert isinstance(cooling, dg.SkipReason)
        evaluate(build_ingest_sensor(settings, WINDOW_JOB), instance, **resources)
        return count

    with no_warehouse_writes(*warehouses.values()):
        assert statements_of_a_tick(sizes[0]) == statements_of_a_tick(sizes[1])


def windows_of(request: dg.RunRequest) -> tuple[str, str]:
    """The first and last window a run request of the window job covers: its partition key, or
    the range its tags give."""
    if request.partition_key is not None:
        assert RANGE_START_TAG not in request.tags and RANGE_END_TAG not in request.tags
        return request.partition_key, request.partition_key
    return request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]


def test_the_ingest_sensor_rereads_exactly_the_window_of_a_late_commit(
    app_db: AppDatabase,
    tmp_path: Path,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deployed `ingest_sensor` over windows ingested up to T = 11:30: idle until a row
    commits late into the 11:00 window, then one run of exactly that partition, keyed by the
    window's source count (a repeated tick asks for the same run, a further late row for a new
    one); the window after T is requested alone once it closed plus the ingest lag."""
    first = NOW - timedelta(hours=1)
    watermark = first + 2 * WINDOW
    settings = Settings.from_env(
        {
            "RUNHUB_HOME": str(tmp_path / "home"),
            "RUNHUB_APP_DB_URL": app_db.url,
            "RUNHUB_PARTITIONS_START": first.isoformat(),
        }
    )
    insert_rows(app_db, "projects", [project("p1")])
    insert_rows(
        app_db,
        "business_events",
        [
            business_event(1, "p1", "lead_created", first, first + timedelta(minutes=1)),
            business_event(2, "p1", "lead_created", watermark - WINDOW, watermark - WINDOW),
        ],
    )
    warehouse = Warehouse(path=str(settings.warehouse_path))
    ingest_and_stage(app_db, warehouse, first, watermark)
    definitions = build_definitions(settings)
    sensor = definitions.resolve_sensor_def(INGEST_SENSOR)
    # The sensor reads the wall clock itself (build_ingest_sensor takes no clock): fix it here.
    # Until T + 15 min + the lag, the window after T has not closed long enough to be due.
    now = watermark + WINDOW + settings.ingest_lag - timedelta(seconds=1)
    monkeypatch.setattr(runhub_pipeline.ingest_sensor, "utc_now", lambda: now)

    def tick() -> dg.SensorResult | dg.SkipReason:
        return evaluate(sensor, instance, app_db=app_db, warehouse=warehouse)

    def only_request() -> dg.RunRequest:
        result = tick()
        assert isinstance(result, dg.SensorResult), result
        [request] = result.run_requests or []
        return request

    idle = tick()
    assert isinstance(idle, dg.SkipReason)
    assert idle.skip_message == "no window has closed since the last ingest and no late commits"

    # A transaction that began at 11:03 commits its row after the window was ingested.
    late_row = business_event(3, "p1", "lead_created", first, first + timedelta(minutes=3))
    insert_rows(app_db, "business_events", [late_row])
    late = only_request()
    key = "2026-03-30-11:00"
    assert (windows_of(late), late.run_key) == ((key, key), f"late:{key}:2:2026-03-30T11")
    assert late.job_name in (None, WINDOW_JOB)
    partitions = definitions.resolve_job_def(WINDOW_JOB).partitions_def
    assert partitions is not None and key in partitions.get_partition_keys(current_time=now)
    # Ticks before that run happens ask for the same run: Dagster skips a run_key it has seen.
    assert only_request().run_key == late.run_key
    # If that run failed, the window still differs an hour later: a new run_key retries it.
    later = now
    monkeypatch.setattr(
        runhub_pipeline.ingest_sensor, "utc_now", lambda: later + timedelta(hours=1)
    )
    retried = tick()
    assert isinstance(retried, dg.SensorResult), retried
    late_keys = [r.run_key for r in retried.run_requests or [] if r.partition_key == key]
    assert late_keys == [f"late:{key}:2:2026-03-30T12"]
    monkeypatch.setattr(runhub_pipeline.ingest_sensor, "utc_now", lambda: now)

    # Re-read, the window is current again; another late row (analytics) is a new run.
    ingest_and_stage(app_db, warehouse, first, first + WINDOW)
    assert isinstance(tick(), dg.SkipReason)
    insert_rows(
        app_db,
        "inhouse_analytics_events",
        [analytics_event(4, "p1", "page_view", "s1", first, first + timedelta(minutes=14))],
    )
    again = only_request()
    assert (windows_of(again), again.run_key) == ((key, key), f"late:{key}:3:2026-03-30T11")
    ingest_and_stage(app_db, warehouse, first, first + WINDOW)

    # The window after T is due once it closed plus the ingest lag: a run of it alone.
    now = watermark + WINDOW + settings.ingest_lag
    due = only_request()
    next_key = "2026-03-30-11:30"
    assert (windows_of(due), due.run_key) == ((next_key, next_key), f"ingest:{next_key}:{next_key}")
    assert due.partition_key == next_key  # a single-partition run, not a range of one
    assert only_request().run_key == due.run_key


def test_a_failed_blocking_check_holds_the_sends_back(
    app_db: AppDatabase, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    warehouse = seed(app_db, tmp_path)
    queue_run(app_db, "promo", "p1", "send_promo")

    @dg.asset(name="fct_checkouts")
    def fct_checkouts() -> None:
        return None

    @dg.asset_check(asset="fct_checkouts", name="checkout_status_consistent", blocking=True)
    def checkout_status_consistent() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False, description="2 checkouts with a bad status")

    definitions = dg.Definitions(
        assets=[fct_checkouts],
        asset_checks=[checkout_status_consistent],
        jobs=build_send_jobs(settings_for(app_db, tmp_path)),
        sensors=build_send_sensors(clock=lambda: NOW),
        schedules=build_send_schedules(),
        resources={"app_db": app_db, "warehouse": warehouse, "email": outbox(tmp_path)},
    )
    dg.materialize(
        [fct_checkouts, checkout_status_consistent], instance=instance, raise_on_error=False
    )
    resources = {"app_db": app_db, "warehouse": warehouse}
    for name in ("abandoned_checkout_sensor", "workflow_runs_sensor"):
        with dg.build_sensor_context(
            instance=instance, definitions=definitions, resources=resources
        ) as context:
            result = definitions.resolve_sensor_def(name)(context)
        assert isinstance(result, dg.SkipReason)
        assert result.skip_message == (
            "held back: blocking data-quality checks failed:"
            " fct_checkouts:checkout_status_consistent: 2 checkouts with a bad status"
        )
    insert_rows(app_db, "projects", [project("p9", digest_next_at=NOW - timedelta(hours=1))])
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=NOW,
        resources={"app_db": app_db},
        repository_def=definitions.get_repository_def(),
    ) as context:
        digest = definitions.resolve_schedule_def("daily_digest_schedule")(context)
    assert isinstance(digest, dg.SkipReason)
    assert (digest.skip_message or "").startswith("held back: blocking data-quality checks")
    assert app_db.fetch_all("select status from workflow_runs")[0].status == "queued"

    gate = blocking_checks_gate(instance, definitions)
    counts = run_send_sensors_once(
        app_db, warehouse, outbox(tmp_path), settings_for(app_db, tmp_path), NOW, gate=gate
    )
    assert counts == {} and not (tmp_path / "outbox").exists()
