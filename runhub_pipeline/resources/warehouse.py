"""The DuckDB warehouse: one private writer file, one published read-only snapshot.

DuckDB lets one process hold a file for writing and then refuses every other process, readers
included ("Could not set lock on file"). So nobody but the pipeline ever opens the writer file
(`<name>.writer.duckdb`), and it takes turns on an advisory file lock (`<name>.lock`), so runs of
different windows wait for each other instead of failing. The published file (`warehouse.duckdb`),
which analysts and sensors open read-only, is a checkpointed copy of the writer file, atomically
renamed into place. A reader keeps the snapshot it opened; the rename never disturbs it, and a
killed writer leaves the previous snapshot in place.

A copy costs time in proportion to the whole file, not to what changed, so a run publishes once,
at the end of its last step that writes the warehouse (the steps tagged `WRITES_WAREHOUSE_TAG`),
and the publish rewrites only what changed: it brings the snapshot before the current one (kept
as `.<name>.spare`) up to date chunk by chunk, unless a reader still holds it.
Its other steps (checks, serving) read the writer file under the lock (`Warehouse.run_reader`).
A run that stops early, a failed blocking check included, publishes nothing: the snapshot only
ever moves to the end state of a run whose writing steps all ran.
"""

from __future__ import annotations

import fcntl
import os
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb

from runhub_pipeline.settings import DEFAULT_WAREHOUSE_MEMORY

WRITER_LOCK_TIMEOUT_SECONDS = 3600.0
# Dagster pool of every step that writes the warehouse or serves from it; its limit (1) is set
# on the instance.
WAREHOUSE_POOL = "warehouse"
# Op tag of the steps that write the warehouse: the last of them in a run publishes the snapshot.
WRITES_WAREHOUSE_TAG = "runhub/writes_warehouse"
# DuckDB's default block size. It is the unit of the publish's comparison, so one changed block
# rewrites two chunks at most (the blocks start after the file's 12 KiB of headers).
DUCKDB_BLOCK_BYTES = 256 * 1024


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


def spare_path(published: Path) -> Path:
    return published.with_name(f".{published.name}.spare")


def lock_unread_file(descriptor: int) -> bool:
    """Takes an exclusive lock on the open file unless a reader holds it; False if one does.

    DuckDB takes a shared `fcntl` lock on every file it opens read-only. An open-file-description
    lock conflicts with it even when the reader is a connection of this very process, which a
    classic `fcntl` lock would not. Closing `descriptor` releases the lock.
    """
    request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)  # struct flock
    try:
        fcntl.fcntl(descriptor, fcntl.F_OFD_SETLK, request)
    except BlockingIOError:
        return False
    return True


def overwrite_changed_chunks(source: Path, target: int) -> int:
    """Makes the open file `target` byte-equal to `source` by writing only the chunks that differ;
    returns the number of bytes written."""
    written = 0
    with source.open("rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        for offset in range(0, size, DUCKDB_BLOCK_BYTES):
            chunk = os.pread(handle.fileno(), DUCKDB_BLOCK_BYTES, offset)
            if os.pread(target, len(chunk), offset) != chunk:
                written += os.pwrite(target, chunk, offset)
    os.ftruncate(target, size)
    return written


def publish_snapshot(source: Path, published: Path) -> int:
    """Makes `published` a copy of the checkpointed writer file `source` in one atomic rename;
    returns the number of bytes it wrote.

    The copy is made in the spare file, the snapshot before the current one, so it only rewrites
    the chunks that changed over the last two publishes: a checkpoint rewrites a few blocks of a
    file that grows with the whole history. A reader that still holds the spare keeps it, and the
    copy goes to a new file. Then the current snapshot becomes the spare. A crash at any point
    leaves `published` whole (readers never open the spare by its name, only snapshots they
    opened before it became the spare) and the next publish mends the spare, whatever it holds.
    """
    spare = spare_path(published)
    descriptor = os.open(spare, os.O_RDWR | os.O_CREAT, 0o644)
    if not lock_unread_file(descriptor):
        os.close(descriptor)
        spare.unlink()
        descriptor = os.open(spare, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        written = overwrite_changed_chunks(source, descriptor)
        os.fsync(descriptor)
    finally:
        # Unlocked before it is published: DuckDB refuses to open a file somebody else locks.
        os.close(descriptor)
    previous = published.with_name(f".{published.name}.previous")
    previous.unlink(missing_ok=True)
    if published.exists():
        os.link(published, previous)
    os.replace(spare, published)
    if previous.exists():
        os.replace(previous, spare)
    return written


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


def warehouse_writers(job: dg.JobDefinition) -> list[str]:
    """The steps of `job` (a run's job, subset to what the run executes) that write the
    warehouse, in the order they run."""
    return [
        node.name
        for node in job.graph.nodes_in_topological_order
        if node.definition.tags.get(WRITES_WAREHOUSE_TAG)
    ]


class Warehouse(dg.ConfigurableResource):
    """The analyst warehouse at `path` (read-only snapshot) and its private writer file."""

    path: str
    # DuckDB's memory limit per connection (RUNHUB_WAREHOUSE_MEMORY); beyond it DuckDB spills.
    memory_limit: str = DEFAULT_WAREHOUSE_MEMORY

    @property
    def published_path(self) -> Path:
        return Path(self.path)

    @contextmanager
    def writer(self, publish: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """Exclusive write access; with `publish`, the snapshot is published when the block ends
        without error.

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
            if publish:
                publish_snapshot(writer_path(published), published)

    @contextmanager
    def step_writer(self, context: dg.AssetExecutionContext) -> Iterator[duckdb.DuckDBPyConnection]:
        """`writer()` for a step tagged `WRITES_WAREHOUSE_TAG`: it publishes the snapshot when
        it is the last such step of its run."""
        writers = warehouse_writers(context.job_def)
        with self.writer(publish=writers[-1:] == [context.op_handle.name]) as connection:
            yield connection

    @contextmanager
    def run_reader(
        self, context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection for a step that reads what its run wrote.

        In a run that writes the warehouse, that is the writer file, read under the writer lock:
        the run publishes only at its end. A run that writes nothing (a check-only run) reads
        the published snapshot and so never waits behind a running backfill.
        """
        if not warehouse_writers(context.job_def):
            with self.reader() as connection:
                yield connection
            return
        published = self.published_path
        with (
            exclusive_lock(lock_path(published), WRITER_LOCK_TIMEOUT_SECONDS),
            self._read_only(writer_path(published), "its run wrote nothing") as connection,
        ):
            yield connection

    @contextmanager
    def reader(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection to the published snapshot, safe while a run writes."""
        with self._read_only(self.published_path, "run `runhub backfill`") as connection:
            yield connection

    @contextmanager
    def _read_only(self, path: Path, if_missing: str) -> Iterator[duckdb.DuckDBPyConnection]:
        if not path.exists():
            raise WarehouseNotBuiltError(f"the warehouse {path} does not exist yet: {if_missing}")
        connection = connect_utc(path, read_only=True, memory_limit=self.memory_limit)
        try:
            yield connection
        finally:
            connection.close()
