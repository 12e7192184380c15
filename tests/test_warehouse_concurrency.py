"""The warehouse under concurrent use and crashes (issue 2, items 6 and 7), with real processes.

- an analyst process queries the published warehouse while `runhub backfill` writes, and never
  fails;
- two runs of different windows at once both succeed (they take turns on the writer);
- `kill -9` of a run in the middle of a write leaves no partial window visible, and the rerun
  equals a clean backfill.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from runhub_pipeline.definitions import build_definitions
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.warehouse import (
    DUCKDB_BLOCK_BYTES,
    Warehouse,
    lock_path,
    publish_snapshot,
    spare_path,
    writer_path,
)
from runhub_pipeline.settings import WINDOW, Settings
from runhub_pipeline.simulate import SimulationSpec, simulate
from tests.factories import utc
from tests.test_exactly_once import snapshot

pytestmark = pytest.mark.slow

END = utc("2026-03-10 00:00")
DAYS = 3
START = END - timedelta(days=DAYS)


def runhub_env(app_db: AppDatabase, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "RUNHUB_HOME": str(home),
        "RUNHUB_APP_DB_URL": app_db.url,
        "RUNHUB_PARTITIONS_START": "2026-03-01T00:00Z",
    }


def backfill(
    app_db: AppDatabase, home: Path, start: datetime, end: datetime
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "runhub"),
            "backfill",
            "--start",
            start.isoformat(),
            "--end",
            end.isoformat(),
        ],
        env=runhub_env(app_db, home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def writer_is_busy(published: Path) -> bool:
    """True while some process holds the warehouse writer lock."""
    path = lock_path(published)
    if not path.exists():
        return False
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


@pytest.fixture
def simulated(sqlite_app_db: AppDatabase) -> Iterator[AppDatabase]:
    simulate(sqlite_app_db, SimulationSpec(projects=6, days=DAYS, seed=7, end=END))
    yield sqlite_app_db


# An analyst: queries the published snapshot in a loop until SIGTERM or the stop file, then
# prints one JSON line: queries that succeeded, every error (of any kind), and the watermarks
# it saw. Each snapshot must be whole: a ledger row that does not balance is an error too.
ANALYST = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import duckdb

    path, stop_file = sys.argv[1], sys.argv[2]
    stopping = False

    def stop(*_):
        global stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    attempts, ok, errors, watermarks = 0, 0, [], set()
    while True:
        last = stopping or os.path.exists(stop_file)  # one more query after the request
        attempts += 1
        try:
            con = duckdb.connect(path, read_only=True)
            try:
                watermark, unbalanced = con.execute(
                    "select max(window_start) + interval 15 minutes,"
                    " count(*) filter (where source_rows <> staged + duplicates + quarantined)"
                    " from ingest_ledger"
                ).fetchone()
            finally:
                con.close()
            ok += 1
            watermarks.add(watermark.isoformat())
            if unbalanced:
                errors.append(f"{unbalanced} ledger rows do not balance")
        except Exception as error:
            errors.append(f"{type(error).__name__}: {error}")
        if attempts == 1:
            print("ready", flush=True)
        if last:
            break
        time.sleep(0.02)
    print(json.dumps({"queries": ok, "errors": errors, "watermarks": sorted(watermarks)}))
    """
)


def test_analyst_reads_while_a_backfill_writes(simulated: AppDatabase, tmp_path: Path) -> None:
    home = tmp_path / "home"
    published = home / "warehouse.duckdb"
    first = backfill(simulated, home, START, START + WINDOW)
    assert first.wait(timeout=300) == 0, first.stdout.read() if first.stdout else ""

    analyst = subprocess.Popen(
        [sys.executable, "-c", ANALYST, str(published), str(tmp_path / "stop")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert analyst.stdout is not None
        # It has queried once: its reads begin before the run's writes.
        ready = analyst.stdout.readline()
        assert ready == "ready\n", ready + analyst.communicate(timeout=30)[1]
        run = backfill(simulated, home, START + WINDOW, END)
        overlapped = 0
        while run.poll() is None:
            overlapped += writer_is_busy(published)
            time.sleep(0.05)
        analyst.send_signal(signal.SIGTERM)
        out, err = analyst.communicate(timeout=60)
    finally:
        if analyst.poll() is None:
            analyst.kill()
            analyst.wait()
    assert run.returncode == 0, run.stdout.read() if run.stdout else ""
    assert overlapped > 0, "the run never held the writer: the test proved nothing"
    assert analyst.returncode == 0, err
    report = json.loads(out.splitlines()[-1])
    assert report["errors"] == []
    assert report["queries"] > 0
    # It read the snapshot from before the run's writes and the one after them.
    seen = [datetime.fromisoformat(text) for text in report["watermarks"]]
    assert (min(seen), max(seen)) == (START + WINDOW, END)


def test_analyst_reads_while_writer_holds_the_lock(simulated: AppDatabase, tmp_path: Path) -> None:
    """Deterministic version: the analyst queries exactly while a writer holds the file open."""
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    with warehouse.writer() as connection:
        connection.execute("create table t as select 1 as x")
    with warehouse.writer() as connection:
        connection.execute("insert into t values (2)")
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                "import duckdb, sys; c = duckdb.connect(sys.argv[1], read_only=True);"
                " print(c.execute('select count(*) from t').fetchone()[0])",
                warehouse.path,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"  # the published snapshot, not the open transaction
    with warehouse.reader() as connection:
        assert connection.execute("select count(*) from t").fetchone() == (2,)


def test_runs_of_different_windows_at_once_both_succeed(
    simulated: AppDatabase, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    middle = START + timedelta(days=1)
    runs = [backfill(simulated, home, START, middle), backfill(simulated, home, middle, END)]
    for run in runs:
        assert run.wait(timeout=600) == 0, run.stdout.read() if run.stdout else ""
    scratch = tmp_path / "scratch"
    clean = backfill(simulated, scratch, START, END)
    assert clean.wait(timeout=600) == 0
    assert snapshot(Warehouse(path=str(home / "warehouse.duckdb"))) == snapshot(
        Warehouse(path=str(scratch / "warehouse.duckdb"))
    )


# Ledger source_table: (raw copy, staged table) of each event source.
EVENT_TABLES = {
    "business_events": ("raw_business_events", "stg_business_events"),
    "inhouse_analytics_events": ("raw_analytics_events", "stg_analytics_events"),
}


def assert_no_partial_window(warehouse: Warehouse) -> None:
    """For both event sources, every window of the ledger accounts for its rows and no rows lie
    outside it: raw rows read = ledger source_rows = staged + duplicates + quarantined, and the
    staged and quarantined rows of each window are the ledger's counts."""
    counted: dict[str, dict[tuple[str, datetime], int]] = {}
    with warehouse.reader() as con:
        ledger = {
            (table, start): (source_rows, staged, duplicates, quarantined)
            for table, start, source_rows, staged, duplicates, quarantined in con.execute(
                "select source_table, window_start, source_rows, staged, duplicates, quarantined"
                " from ingest_ledger"
            ).fetchall()
        }
        for kind, position in (("raw", 0), ("staged", 1)):
            counted[kind] = {}
            for source, tables in EVENT_TABLES.items():
                rows = con.execute(
                    f"select ingest_window_start, count(*) from {tables[position]}"
                    " group by ingest_window_start"
                ).fetchall()
                counted[kind].update({(source, start): n for start, n in rows})
        counted["quarantined"] = {
            (source, start): n
            for source, start, n in con.execute(
                "select source_table, ingest_window_start, count(*) from quarantined_events"
                " group by source_table, ingest_window_start"
            ).fetchall()
        }
    assert {source for source, _ in ledger} == set(EVENT_TABLES), "nothing to check"
    wrong: list[tuple[object, ...]] = []
    for key in sorted(set(ledger).union(*counted.values())):
        source_rows, staged, duplicates, quarantined = ledger.get(key, (0, 0, 0, 0))
        found = tuple(counted[kind].get(key, 0) for kind in ("raw", "staged", "quarantined"))
        if key not in ledger and any(found):
            wrong.append((key, "rows of a window the ledger does not list", found))
        elif source_rows != staged + duplicates + quarantined:
            wrong.append((key, "unbalanced", ledger[key]))
        elif (source_rows, staged, quarantined) != found:
            wrong.append((key, ledger[key], found))
    assert wrong == []


def wait_until_stopped(pid: int) -> None:
    """Wait until every thread of `pid` has stopped (SIGSTOP is delivered asynchronously)."""
    deadline = time.monotonic() + 10
    while True:
        states = []
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            with contextlib.suppress(OSError):  # a thread that just exited
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        if states and all(state in "tTZX" for state in states):
            return
        assert time.monotonic() < deadline, f"process {pid} did not stop: {states}"
        time.sleep(0.001)


def kill_mid_write(run: subprocess.Popen[str], published: Path, delay: float) -> None:
    """SIGKILL `run` while it holds the warehouse writer, provably: `delay` seconds into its
    first write, freeze it (SIGSTOP) and kill it only if it still holds the writer lock, that
    is, a write has begun and can no longer finish; else let it go on to its next write."""
    deadline = time.monotonic() + 300
    while not writer_is_busy(published):
        assert run.poll() is None, "the run ended before it wrote"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(delay)
    while True:
        assert run.poll() is None, "the run ended before it could be killed mid-write"
        assert time.monotonic() < deadline, "never caught the run holding the writer"
        if writer_is_busy(published):
            run.send_signal(signal.SIGSTOP)
            wait_until_stopped(run.pid)
            if writer_is_busy(published):
                break
            run.send_signal(signal.SIGCONT)
        time.sleep(0.005)
    run.send_signal(signal.SIGKILL)
    assert run.wait(timeout=30) == -signal.SIGKILL
    output = run.stdout.read() if run.stdout else ""
    # The run had started (its first line) and not finished (no "backfill run … succeeded").
    assert "backfilling " in output and "succeeded" not in output, output


@pytest.mark.parametrize(
    ("dialect", "delay"),
    [
        ("sqlite", 0.0),
        ("sqlite", 0.4),
        ("sqlite", 1.2),
        pytest.param("postgres", 0.4, marks=pytest.mark.postgres),
    ],
)
def test_kill_minus_nine_mid_write_then_rerun(
    dialect: str, delay: float, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    simulated: AppDatabase = request.getfixturevalue(f"{dialect}_app_db")
    simulate(simulated, SimulationSpec(projects=6, days=DAYS, seed=7, end=END))
    home = tmp_path / "home"
    published = home / "warehouse.duckdb"
    # A first, complete window so the killed run has a previous state to leave intact.
    assert backfill(simulated, home, START, START + WINDOW).wait(timeout=300) == 0
    run = backfill(simulated, home, START, END)
    kill_mid_write(run, published, delay)
    assert not writer_is_busy(published)  # the kernel released the dead run's lock
    assert_no_partial_window(Warehouse(path=str(published)))

    assert backfill(simulated, home, START, END).wait(timeout=600) == 0
    scratch = tmp_path / "scratch"
    assert backfill(simulated, scratch, START, END).wait(timeout=600) == 0
    clean = Warehouse(path=str(scratch / "warehouse.duckdb"))
    assert_no_partial_window(clean)
    assert snapshot(Warehouse(path=str(published))) == snapshot(clean)


def test_the_memory_limit_setting_reaches_every_warehouse_connection(tmp_path: Path) -> None:
    settings = Settings.from_env({"RUNHUB_HOME": str(tmp_path), "RUNHUB_WAREHOUSE_MEMORY": "300MB"})
    resources = build_definitions(settings).resources
    assert resources is not None
    warehouse = resources["warehouse"]
    assert isinstance(warehouse, Warehouse)
    with warehouse.writer() as connection:
        writer_limit = connection.execute("select current_setting('memory_limit')").fetchone()
    with warehouse.reader() as connection:
        reader_limit = connection.execute("select current_setting('memory_limit')").fetchone()
    # DuckDB reports the limit in MiB: 300 MB = 286.1 MiB, far below its default of 80 % of RAM.
    assert writer_limit == reader_limit == ("286.1 MiB",)


def published_version(warehouse: Warehouse, version: int) -> None:
    """One writer transaction that changes a few rows of a multi-megabyte table, then publishes."""
    with warehouse.writer() as connection:
        if version == 0:
            connection.execute(
                "create table t as select range as id, md5(range::varchar) as h, 0 as version"
                " from range(400000)"
            )
        connection.execute("update t set version = ? where id % 1000 = 0", [version])


def test_a_publish_rewrites_only_what_changed_and_never_a_snapshot_being_read(
    tmp_path: Path,
) -> None:
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    published, writer = warehouse.published_path, writer_path(warehouse.published_path)
    for version in range(3):
        published_version(warehouse, version)
    size = published.stat().st_size
    assert size > 8 * DUCKDB_BLOCK_BYTES
    # A publish finds the snapshot before the current one as its spare: it rewrites the few
    # chunks that changed since.
    assert published.read_bytes() == writer.read_bytes()
    assert 0 < publish_snapshot(writer, published) < size / 4

    # A reader of this very process holds snapshot 2 while two more publishes happen: the second
    # of them finds that snapshot as its spare and must write a new file instead.
    held = os.open(published, os.O_RDONLY)
    held_bytes = published.read_bytes()
    with warehouse.reader() as reader:
        published_version(warehouse, 3)
        published_version(warehouse, 4)
        assert reader.execute("select max(version), count(*) from t").fetchone() == (2, 400000)
        assert reader.execute(
            "select sum(hash(h)) = (select sum(hash(md5(range::varchar)))"
            " from range(400000)) from t"
        ).fetchone() == (True,)
    assert os.pread(held, len(held_bytes) + 1, 0) == held_bytes
    os.close(held)
    with warehouse.reader() as reader:
        assert reader.execute("select max(version) from t").fetchone() == (4,)
    assert published.read_bytes() == writer.read_bytes()


def test_a_publish_mends_whatever_the_spare_holds(tmp_path: Path) -> None:
    """A crash mid-publish leaves the spare half-written; the next publish must still be exact."""
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    published, writer = warehouse.published_path, writer_path(warehouse.published_path)
    for version in range(2):
        published_version(warehouse, version)
    spare = spare_path(published)
    damaged = bytearray(spare.read_bytes()[: spare.stat().st_size // 2])
    damaged[20 * 1024 : 40 * 1024] = b"\xff" * 20 * 1024
    spare.write_bytes(bytes(damaged) + b"\0" * 12345)
    published_version(warehouse, 2)
    assert published.read_bytes() == writer.read_bytes()
    with warehouse.reader() as reader:
        assert reader.execute("select max(version), count(*) from t").fetchone() == (2, 400000)
