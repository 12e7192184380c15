"""The warehouse under concurrent use and crashes (issue 2, items 6 and 7), with real processes.

- an analyst process queries the published warehouse while `runhub backfill` writes, and never
  fails;
- two runs of different windows at once both succeed (they take turns on the writer);
- `kill -9` of a run in the middle of a write leaves no partial window visible, and the rerun
  equals a clean backfill.
"""

from __future__ import annotations

import fcntl
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
from runhub_pipeline.resources.warehouse import Warehouse, lock_path
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


ANALYST = textwrap.dedent(
    """
    import sys, time, duckdb
    path, deadline = sys.argv[1], time.time() + float(sys.argv[2])
    ok = failures = 0
    while time.time() < deadline:
        try:
            con = duckdb.connect(path, read_only=True)
            con.execute("select count(*) from ingest_ledger").fetchall()
            con.close()
            ok += 1
        except duckdb.IOException as error:
            if "does not exist" in str(error) or "No such file" in str(error):
                time.sleep(0.05)
                continue
            failures += 1
            print("FAILED", error, flush=True)
        time.sleep(0.02)
    print("queries", ok, "failures", failures, flush=True)
    """
)


def test_analyst_reads_while_a_backfill_writes(simulated: AppDatabase, tmp_path: Path) -> None:
    home = tmp_path / "home"
    published = home / "warehouse.duckdb"
    first = backfill(simulated, home, START, START + WINDOW)
    assert first.wait(timeout=300) == 0, first.stdout.read() if first.stdout else ""

    run = backfill(simulated, home, START + WINDOW, END)
    analyst = subprocess.Popen(
        [sys.executable, "-c", ANALYST, str(published), "600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    overlapped = 0
    while run.poll() is None:
        overlapped += writer_is_busy(published)
        time.sleep(0.05)
    analyst.send_signal(signal.SIGTERM)
    assert run.returncode == 0, run.stdout.read() if run.stdout else ""
    analyst_out = analyst.communicate(timeout=30)[0]
    assert overlapped > 0, "the run never held the writer: the test proved nothing"
    assert "FAILED" not in analyst_out


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


def assert_no_partial_window(warehouse: Warehouse) -> None:
    """Every staged row belongs to a window whose ledger accounts for it, and vice versa."""
    if not Path(warehouse.path).exists():
        return
    with warehouse.reader() as con:
        tables = {
            r[0] for r in con.execute("select table_name from information_schema.tables").fetchall()
        }
        if "ingest_ledger" not in tables:
            return
        unbalanced = con.execute(
            "select count(*) from ingest_ledger"
            " where source_rows <> staged + duplicates + quarantined"
        ).fetchone()
        mismatch = con.execute(
            "select count(*) from ("
            " select window_start, staged from ingest_ledger where source_table = 'business_events'"
            " ) as l full join ("
            " select ingest_window_start as window_start, count(*) as n from stg_business_events"
            " group by ingest_window_start) as s using (window_start)"
            " where coalesce(l.staged, 0) <> coalesce(s.n, 0)"
        ).fetchone()
    assert unbalanced == (0,)
    assert mismatch == (0,)


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
    deadline = time.monotonic() + 120
    while not writer_is_busy(published):
        assert run.poll() is None, "the run ended before it wrote"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(delay)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    assert_no_partial_window(Warehouse(path=str(published)))

    assert backfill(simulated, home, START, END).wait(timeout=600) == 0
    scratch = tmp_path / "scratch"
    assert backfill(simulated, scratch, START, END).wait(timeout=600) == 0
    assert snapshot(Warehouse(path=str(published))) == snapshot(
        Warehouse(path=str(scratch / "warehouse.duckdb"))
    )


def test_the_memory_limit_setting_reaches_every_warehouse_connection(tmp_path: Path) -> None:
    settings = Settings.from_env({"RUNHUB_HOME": str(tmp_path), "RUNHUB_WAREHOUSE_MEMORY": "300MB"})
    warehouse = build_definitions(settings).resources["warehouse"]
    assert isinstance(warehouse, Warehouse)
    with warehouse.writer() as connection:
        writer_limit = connection.execute("select current_setting('memory_limit')").fetchone()
    with warehouse.reader() as connection:
        reader_limit = connection.execute("select current_setting('memory_limit')").fetchone()
    # DuckDB reports the limit in MiB: 300 MB = 286.1 MiB, far below its default of 80 % of RAM.
    assert writer_limit == reader_limit == ("286.1 MiB",)
