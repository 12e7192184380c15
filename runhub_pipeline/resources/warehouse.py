"""The DuckDB warehouse: one private writer file, one published read-only snapshot.

DuckDB lets one process hold a file for writing and then refuses every other process, readers
included ("Could not set lock on file"). So nobody but the pipeline's writer ever opens the writer
file (`<name>.writer.duckdb`), and writers take turns on an advisory file lock (`<name>.lock`), so
runs of different windows wait for each other instead of failing. After a writer's transaction
commits, the writer file is checkpointed, copied and atomically renamed over the published file
(`warehouse.duckdb`), which analysts, sensors and checks open read-only. A reader keeps the
snapshot it opened; the rename never disturbs it, and a killed writer leaves the previous snapshot
in place.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb

from runhub_pipeline.settings import DEFAULT_WAREHOUSE_MEMORY

WRITER_LOCK_TIMEOUT_SECONDS = 3600.0
# Dagster pool of every step that writes the warehouse; its limit (1) is set on the instance.
WAREHOUSE_POOL = "warehouse"


def utc_now() -> datetime:
    """Wall-clock time for orchestration code; library functions take the time as a parameter."""
    return datetime.now(UTC)


class WarehouseNotBuiltError(RuntimeError):
    """The published warehouse does not exist yet (no window has been materialized)."""


def writer_path(published: Path) -> Path:
    return published.with_name(f"{published.stem}.writer{published.suffix}")


def lock_path(published: Path) -> Path:
    return published.with_name(f"{published.stem}.lock")


def connect_utc(
    path: Path | str, read_only: bool = False, memory_limit: str = DEFAULT_WAREHOUSE_MEMORY
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection whose session time zone is UTC (CONTRACT §2).

    DuckDB's own default memory limit is 80 % of the machine: a 30-day backfill then grew the
    process to ~9 GiB. With a limit, big joins and sorts spill to `<file>.tmp` instead.
    """
    connection = duckdb.connect(
        str(path), read_only=read_only, config={"memory_limit": memory_limit}
    )
    connection.execute("set TimeZone = 'UTC'")
    return connection


@contextmanager
def exclusive_lock(path: Path, timeout_seconds: float) -> Iterator[None]:
    """Holds an advisory lock on `path` (created if missing) across processes; waits for it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        deadline = time.monotonic() + timeout_seconds
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as busy:
                if time.monotonic() > deadline:
                    message = f"waited {timeout_seconds:.0f}s for the writer lock {path}"
                    raise TimeoutError(message) from busy
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def publish_snapshot(source: Path, published: Path) -> None:
    """Copy the checkpointed writer file over `published` in one atomic rename."""
    temporary = published.with_name(f".{published.name}.{os.getpid()}.tmp")
    shutil.copyfile(source, temporary)
    with temporary.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, published)


@contextmanager
def transaction(connection: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One DuckDB transaction: committed when the block ends, rolled back if it raises."""
    connection.execute("begin")
    try:
        yield
    except BaseException:
        connection.execute("rollback")
        raise
    connection.execute("commit")


class Warehouse(dg.ConfigurableResource):
    """The analyst warehouse at `path` (read-only snapshot) and its private writer file."""

    path: str
    # DuckDB's memory limit per connection (RUNHUB_WAREHOUSE_MEMORY); beyond it DuckDB spills.
    memory_limit: str = DEFAULT_WAREHOUSE_MEMORY

    @property
    def published_path(self) -> Path:
        return Path(self.path)

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Exclusive write access; the snapshot is published when the block ends without error.

        Callers wrap their statements in one transaction (`begin` / `commit`) so that a crash
        leaves the previous state whole.
        """
        published = self.published_path
        with exclusive_lock(lock_path(published), WRITER_LOCK_TIMEOUT_SECONDS):
            connection = connect_utc(writer_path(published), memory_limit=self.memory_limit)
            try:
                yield connection
                connection.execute("checkpoint")
            finally:
                connection.close()
            publish_snapshot(writer_path(published), published)

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection to the published snapshot, safe while a run writes."""
        if not self.published_path.exists():
            raise WarehouseNotBuiltError(
                f"the warehouse {self.published_path} does not exist yet: run `runhub backfill`"
            )
        connection = connect_utc(
            self.published_path, read_only=True, memory_limit=self.memory_limit
        )
        try:
            yield connection
        finally:
            connection.close()
