"""Workloads and their homes: throwaway PostgreSQL databases, `runhub simulate`, `runhub` runs.

Every database the bench creates is named `runhub_bench_<hex>` and dropped when its block ends.
A `BenchHome` is one pipeline installation: RUNHUB_HOME (warehouse, outbox) in a temporary
directory, the app database, and a Dagster instance (dagster-postgres in its own throwaway
database like production's `deploy/dagster.yaml`, or the embedded SQLite one).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import psycopg
from psycopg import sql as pg_sql

from bench.memory import PeakRss
from bench.progress import Throttle, note

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REPO = Path(__file__).resolve().parent.parent
DEPLOY_DAGSTER_YAML = REPO / "deploy" / "dagster.yaml"
WINDOW = timedelta(minutes=15)


@dataclass(frozen=True)
class Scale:
    name: str
    projects: int
    days: int
    events_per_day: int
    """`runhub simulate --events-per-day`: events per day of a median-size project."""
    sensor_projects: int
    send_recipients: int = 1_000


# medium: 500 projects x 30 days; --events-per-day 250 gives about 6.0 million business +
# analytics events (simulate's project sizes are Pareto, 500 projects x 30 days sum to ~24,000
# median-project-days; checked against a real 20-project run: 340k events predicted 336k).
SCALES = {
    "tiny": Scale("tiny", projects=6, days=1, events_per_day=250, sensor_projects=1_000),
    "medium": Scale("medium", projects=500, days=30, events_per_day=250, sensor_projects=10_000),
    "large": Scale("large", projects=5_000, days=30, events_per_day=250, sensor_projects=10_000),
}


def database_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def throwaway_database(purpose: str) -> Iterator[str]:
    """A new empty database; yields its URL and drops it (with force) at the end."""
    name = f"runhub_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(pg_sql.SQL("create database {}").format(pg_sql.Identifier(name)))
    note(f"created database {name} ({purpose})")
    try:
        yield database_url(name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(
                pg_sql.SQL("drop database if exists {} with (force)").format(
                    pg_sql.Identifier(name)
                )
            )


@dataclass
class BenchHome:
    """One pipeline installation over an app database."""

    root: Path
    app_db_url: str
    partitions_start: datetime
    instance_db: str | None
    """Database name of the dagster-postgres instance, or None for the embedded SQLite one."""

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster"

    def environ(self) -> dict[str, str]:
        """The settings a `runhub` command of this home reads."""
        env = {
            "RUNHUB_HOME": str(self.root),
            "RUNHUB_APP_DB_URL": self.app_db_url,
            "DAGSTER_HOME": str(self.dagster_home),
            "RUNHUB_PARTITIONS_START": self.partitions_start.strftime("%Y-%m-%dT%H:%MZ"),
        }
        if self.instance_db is not None:
            env.update(
                DAGSTER_PG_HOST="127.0.0.1",
                DAGSTER_PG_PORT="5432",
                DAGSTER_PG_USER="postgres",
                DAGSTER_PG_PASSWORD="",
                DAGSTER_PG_DB=self.instance_db,
            )
        return env

    def subprocess_environ(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("RUNHUB_WAREHOUSE", "RUNHUB_SMTP_URL")
        }
        env.update(self.environ())
        return env

    @contextmanager
    def activated(self) -> Iterator[None]:
        """This home's settings in os.environ (the Dagster instance config reads DAGSTER_PG_*)."""
        saved = {key: os.environ.get(key) for key in self.environ()}
        os.environ.update(self.environ())
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@contextmanager
def bench_home(
    app_db_url: str, partitions_start: datetime, instance: str, label: str
) -> Iterator[BenchHome]:
    """A fresh home (and instance database) for `app_db_url`, removed at the end."""
    root = Path(tempfile.mkdtemp(prefix=f"runhub-bench-{label}-"))
    try:
        if instance == "postgres":
            with throwaway_database(f"Dagster instance of {label}") as instance_url:
                home = BenchHome(root, app_db_url, partitions_start, instance_url.rsplit("/")[-1])
                home.dagster_home.mkdir(parents=True)
                shutil.copyfile(DEPLOY_DAGSTER_YAML, home.dagster_home / "dagster.yaml")
                yield home
        else:
            yield BenchHome(root, app_db_url, partitions_start, None)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@dataclass(frozen=True)
class CommandResult:
    seconds: float
    peak_rss: int
    output: str


def run_runhub(
    home: BenchHome,
    args: list[str],
    label: str,
    sample_memory: bool = False,
    quiet_lines: str | None = None,
) -> CommandResult:
    """Run `runhub ARGS` in a subprocess with this home's settings, streaming a throttled
    progress line; raises on a non-zero exit with the last lines of output."""
    command = [sys.executable, "-m", "runhub_pipeline.cli", *args]
    started = time.perf_counter()
    process = subprocess.Popen(
        command,
        env=home.subprocess_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    sampler = PeakRss(process.pid).start() if sample_memory else None
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(15.0):
            rss = f", process tree RSS {sampler.current / 2**20:,.0f} MiB" if sampler else ""
            note(f"  {label}: running for {time.perf_counter() - started:,.0f} s{rss}")

    beat = threading.Thread(target=heartbeat, name="heartbeat", daemon=True)
    beat.start()
    throttle = Throttle(5.0)
    lines: list[str] = []
    assert process.stdout is not None
    for raw in process.stdout:
        line = raw.rstrip()
        lines.append(line)
        if quiet_lines is None or not re.search(quiet_lines, line) or throttle.ready():
            note(f"  {label}: {line.strip()[:120]}")
    code = process.wait()
    done.set()
    seconds = time.perf_counter() - started
    peak = sampler.stop() if sampler else 0
    if code != 0:
        tail = "\n".join(lines[-25:])
        raise RuntimeError(f"`runhub {' '.join(args)}` exited {code}:\n{tail}")
    return CommandResult(seconds, peak, "\n".join(lines))


def load_workload(
    home: BenchHome, projects: int, days: int, events_per_day: int, end: datetime, seed: int
) -> CommandResult:
    """`runhub init` then `runhub simulate` into the home's app database."""
    run_runhub(home, ["init"], "init")
    return run_runhub(
        home,
        [
            "simulate",
            f"--projects={projects}",
            f"--days={days}",
            f"--seed={seed}",
            f"--events-per-day={events_per_day}",
            f"--end={end.strftime('%Y-%m-%dT%H:%MZ')}",
        ],
        "simulate",
        quiet_lines=r"^\s*p\d+ \(",
    )


def count_events(url: str, start: datetime, end: datetime) -> dict[str, int]:
    """Source rows per event table with received_at in [start, end)."""
    counts: dict[str, int] = {}
    with psycopg.connect(url) as connection:
        for table in ("business_events", "inhouse_analytics_events"):
            row = connection.execute(
                pg_sql.SQL(
                    "select count(*) from {} where received_at >= %s and received_at < %s"
                ).format(pg_sql.Identifier(table)),
                (start, end),
            ).fetchone()
            counts[table] = int(row[0]) if row else 0
    return counts
