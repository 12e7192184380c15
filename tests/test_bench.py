"""The benchmark harness's pieces on tiny inputs (issue 6). Never asserts a timing."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import duckdb
import psycopg
import pytest

from bench.backfill import copy_limit_sql
from bench.memory import PeakRss
from bench.meter import metered
from bench.report import Figure, table
from bench.run import Plan, main, parse_args
from bench.runlog import run_timings
from bench.sensor_tick import load_sensor_data
from bench.tick import run_rollup
from bench.warehouse_sizes import table_blocks
from bench.workload import SCALES
from runhub_pipeline.resources.app_db import AppDatabase, SourceReader

END = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.mark.postgres
def test_copy_limit_and_rollup_read_the_bench_data(postgres_app_db: AppDatabase) -> None:
    url = postgres_app_db.url
    written = load_sensor_data(url, projects=3, recipients=5, end=END)
    sql = copy_limit_sql(datetime(2026, 3, 1, tzinfo=UTC), END)
    with psycopg.connect(url) as connection:
        row = connection.execute(f"select count(*) from ({sql}) as q").fetchone()
    assert row is not None and row[0] == written == 11
    first, again = run_rollup(url, END), run_rollup(url, END)
    # Project b00001's leads and checkouts, b00002 and b00003's checkouts; a repeat upserts alike.
    assert first.rows_upserted == again.rows_upserted >= 3


@pytest.mark.postgres
def test_the_meter_counts_reads_on_both_paths_and_restores_them(
    postgres_app_db: AppDatabase,
) -> None:
    load_sensor_data(postgres_app_db.url, projects=4, recipients=1, end=END)
    original = SourceReader.batches
    with metered(postgres_app_db) as use:
        postgres_app_db.fetch_all("select project_id from projects")
        with postgres_app_db.source_reader() as reader:
            rows = sum(b.num_rows for b in reader.batches("select project_id from projects"))
        postgres_app_db.execute("update projects set name = name")
    assert rows == 4
    assert use.read_rows == 8 and use.read_statements == 2 and use.write_statements == 1
    assert use.rows_by_query == {"projects": 8}
    assert SourceReader.batches is original


def test_peak_rss_samples_a_process_tree() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    sampler = PeakRss(child.pid, interval=0.05).start()
    child.wait()
    assert sampler.stop() > 0 and sampler.samples >= 1


def test_run_timings_come_from_the_event_log() -> None:
    @dg.asset
    def one() -> int:
        return 1

    with dg.instance_for_test() as instance:
        result = dg.materialize([one], instance=instance)
        timings = run_timings(instance, result.run_id)
    assert set(timings.per_step) == {"one"}
    assert timings.steps >= 0 and timings.launch >= 0 and timings.events > 0


def test_the_table_shows_each_median_beside_its_target() -> None:
    figures = [
        Figure("e", "send", [3.0, 12.0, 4.0], "s", "< 10 s", lambda v: v < 10),
        Figure("a", "launch", [1.0], "s", "reported beside", None),
    ]
    printed = table(figures, repeat=3)
    assert "4.000 s" in printed and "ok" in printed and "MISSED" not in printed
    assert printed.splitlines()[3].split()[1:3] == ["launch", "1.000"]


def test_partitions_start_is_one_day_before_the_data_unless_given() -> None:
    plan = Plan(SCALES["tiny"], 1, "postgres", 42, ("tick",), END)
    assert plan.partitions_start == plan.data_start - timedelta(days=1)
    history = datetime(2026, 1, 1, tzinfo=UTC)
    assert dataclasses.replace(plan, requested_partitions_start=history).partitions_start == history
    assert parse_args(["--partitions-start", "2026-01-01T00:00Z"]).partitions_start == history


@pytest.mark.parametrize(
    ("value", "reason"),
    [("2026-01-01T00:05Z", "not on a 15-minute boundary"), ("soon", "not an ISO-8601 time")],
)
def test_a_bad_partitions_start_is_refused_in_one_line(
    value: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--partitions-start", value])
    assert exit_info.value.code == 2
    assert reason in capsys.readouterr().err.splitlines()[-1]


def test_a_partitions_start_after_the_data_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--scale", "tiny", "--partitions-start", "2099-01-01T00:00Z"]) == 2
    assert "is after the data start" in capsys.readouterr().err


def test_warehouse_sizes_divide_the_file_by_table(tmp_path: Path) -> None:
    """A table ten times bigger than another holds several times its blocks; an empty one none."""
    path = tmp_path / "warehouse.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute(
            "create table big as select i, 'row ' || i as text from range(2000000) r(i)"
        )
        connection.execute("create table small as select * from big limit 200000")
        connection.execute("create table empty (i integer)")
        connection.execute("checkpoint")
    with duckdb.connect(str(path), read_only=True) as connection:
        blocks = table_blocks(connection)
    assert blocks["empty"] == 0
    assert blocks["big"] > 5 * blocks["small"] > 0
