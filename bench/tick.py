"""(a) The steady-state tick: one 15-minute window run end to end, against the two-day rollup.

The window job runs the way `runhub backfill` and the sensors' runs do: a Dagster run of
`window_job` on the home's DagsterInstance (`orchestration.execute_window_range`), in the
measuring process so that every app-database read can be metered client-side (`bench.meter`).
Right after it, on the same data, the rollup it replaces upserts daily counts and sums per project
over the last two days of `business_events` into a bench-owned table.

`measure_ticks_in_new_process` runs the ticks in a new Python process: the daemon launches every
run in a new run-worker process, whose first run pays what a process imports on first use (GX, at
its first check); a second run in the same process shows the warm cost beside it.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import psycopg

from bench.meter import metered, server_tuples_read
from bench.runlog import RunTimings, run_timings
from bench.workload import WINDOW, BenchHome, count_events

ROLLUP_TABLE = """
create table if not exists bench_rollup_daily (
    project_id text not null,
    day date not null,
    events bigint not null,
    money_events bigint not null,
    amount_cents bigint not null,
    updated_at timestamptz not null,
    primary key (project_id, day)
)
"""

# The rollup the pipeline replaces, run every 15 minutes. It is given the received_at index:
# rows received in the last two days, grouped by the project and the UTC day they occurred.
ROLLUP = """
insert into bench_rollup_daily as r
    (project_id, day, events, money_events, amount_cents, updated_at)
select
    project_id,
    (occurred_at at time zone 'UTC')::date as day,
    count(*),
    count(amount_cents),
    coalesce(sum(amount_cents), 0),
    now()
from business_events
where received_at >= %(t)s - interval '2 days' and received_at < %(t)s
    and project_id is not null and occurred_at is not null
group by 1, 2
on conflict (project_id, day) do update set
    events = excluded.events,
    money_events = excluded.money_events,
    amount_cents = excluded.amount_cents,
    updated_at = excluded.updated_at
"""

STATS_SETTLE_SECONDS = 1.2


@dataclass(frozen=True)
class RollupSample:
    seconds: float
    rows_upserted: int
    server_tuples: int


@dataclass(frozen=True)
class TickSample:
    window: datetime
    success: bool
    failure: str | None
    new_rows: int
    call_to_first_event: float
    timings: RunTimings
    source_read_seconds: float
    source_connect_seconds: float
    source_rows: int
    source_statements: int
    rows_by_query: dict[str, int]
    seconds_by_query: dict[str, float]
    write_seconds: float
    server_tuples: int
    rollup: RollupSample
    call_seconds: float = 0.0
    # 1 for the first run in its process (cold, as a daemon-launched run), 2 for the next.
    run_in_process: int = 1
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def launch(self) -> float:
        return self.call_to_first_event + self.timings.launch


def run_rollup(url: str, as_of: datetime) -> RollupSample:
    with psycopg.connect(url) as connection:
        connection.execute(ROLLUP_TABLE)
        connection.commit()
    before = server_tuples_read(url)
    with psycopg.connect(url) as connection:
        started = time.perf_counter()
        cursor = connection.execute(ROLLUP, {"t": as_of})
        connection.commit()
        seconds = time.perf_counter() - started
        rows = cursor.rowcount
    time.sleep(STATS_SETTLE_SECONDS)
    return RollupSample(seconds, rows, server_tuples_read(url) - before)


def measure_tick(home: BenchHome, window: datetime) -> TickSample:
    """Run the window `[window, window + 15 min)` as one Dagster run and meter it."""
    from runhub_pipeline.orchestration import dagster_instance, execute_window_range
    from runhub_pipeline.resources.app_db import AppDatabase
    from runhub_pipeline.settings import Settings

    new_rows = sum(count_events(home.app_db_url, window, window + WINDOW).values())
    with home.activated():
        settings = Settings.from_env(home.environ())
        app_db = AppDatabase(url=settings.app_db_url)
        time.sleep(STATS_SETTLE_SECONDS)
        tuples_before = server_tuples_read(home.app_db_url)
        with metered(app_db) as use:
            called = time.time()
            started = time.perf_counter()
            outcome = execute_window_range(settings, window, window)
            call_seconds = time.perf_counter() - started
        app_db.engine.dispose()  # closed backends report their table statistics
        time.sleep(STATS_SETTLE_SECONDS)
        server_tuples = server_tuples_read(home.app_db_url) - tuples_before
        with dagster_instance(settings) as instance:
            timings = run_timings(instance, outcome.run_id)
            first = min(entry.timestamp for entry in instance.all_logs(outcome.run_id))
    rollup = run_rollup(home.app_db_url, window + WINDOW)
    return TickSample(
        window=window,
        success=outcome.success,
        failure=outcome.failure,
        new_rows=new_rows,
        call_to_first_event=max(first - called, 0.0),
        timings=timings,
        source_read_seconds=use.read_seconds,
        source_connect_seconds=use.connect_seconds,
        source_rows=use.read_rows,
        source_statements=use.read_statements,
        rows_by_query=dict(use.rows_by_query),
        seconds_by_query=dict(use.seconds_by_query),
        write_seconds=use.write_seconds,
        server_tuples=server_tuples,
        rollup=rollup,
        call_seconds=call_seconds,
    )


def measure_ticks_in_new_process(home: BenchHome, windows: list[datetime]) -> list[TickSample]:
    """`measure_tick` for each of `windows`, in order, in one new Python process."""
    with tempfile.TemporaryDirectory(prefix="runhub-bench-tick-") as folder:
        request, answer = Path(folder) / "request.pickle", Path(folder) / "answer.pickle"
        request.write_bytes(pickle.dumps((home, windows)))
        subprocess.run([sys.executable, "-m", "bench.tick", str(request), str(answer)], check=True)
        samples: list[TickSample] = pickle.loads(answer.read_bytes())
    return samples


def _main(request: str, answer: str) -> None:
    home, windows = pickle.loads(Path(request).read_bytes())
    samples = [
        replace(measure_tick(home, window), run_in_process=index)
        for index, window in enumerate(windows, start=1)
    ]
    Path(answer).write_bytes(pickle.dumps(samples))


if __name__ == "__main__":
    # Through the module's own name, so that the samples pickle as `bench.tick.TickSample`, not as
    # a class of `__main__` the parent cannot load.
    from bench.tick import _main as main_of_module

    main_of_module(*sys.argv[1:3])
