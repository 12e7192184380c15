"""kill -9 in the middle of a send loop, then a rerun (issue 5 item 2, CONTRACT §7 exactly once).

A real subprocess executes a workflow run (or the digests) against the test's app database,
DuckDB snapshot and file outbox, and is SIGKILLed mid-loop: either by its own transport right
after a delivery and before the claim is marked sent (the worst moment), or by the test after it
has observed claims in the database (an arbitrary moment). Every delivery is appended to a log
with fsync before `send` returns, so a second copy would show even where the outbox file of the
same Message-ID is overwritten. After the reaper and a rerun: nobody got a second copy, every
claimed recipient ends `sent` or `failed` with a reason, and none vanished.
"""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from email.message import EmailMessage
from pathlib import Path

import pytest

from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.email import FileOutboxTransport
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.sends.digest import send_due_digests
from runhub_pipeline.sends.policy import LEASE_DURATION
from runhub_pipeline.sends.reaper import reap_expired_leases
from runhub_pipeline.sends.runs import execute_run
from tests.factories import insert_rows, project
from tests.test_sends_runs import (  # noqa: F401 - release_connections: autouse fixture
    NOW,
    build_warehouse,
    outcome_events,
    queue_run,
    release_connections,
    result_of,
    run_row,
    sends_of,
    settings_for,
    staged,
)

pytestmark = pytest.mark.slow

RECIPIENTS = 120

# The worker: a file outbox that logs every delivery and may SIGKILL its own process.
WORKER = """
import os, signal, sys, time
from datetime import datetime
from pathlib import Path

from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.email import FileOutboxTransport
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.sends.digest import send_due_digests
from runhub_pipeline.sends.runs import execute_run
from runhub_pipeline.settings import Settings


class LoggingOutbox(FileOutboxTransport):
    log: str
    kill_after: int = 0
    pause_seconds: float = 0.0

    def send(self, message):
        super().send(message)
        with open(self.log, "a") as handle:
            handle.write(str(message["To"]) + "\\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.kill_after:
            delivered = len(Path(self.log).read_text().splitlines())
            if delivered >= self.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(self.pause_seconds)


url, warehouse, home, outbox, log, what, now, kill_after, pause = sys.argv[1:]
app_db = AppDatabase(url=url)
transport = LoggingOutbox(
    directory=outbox, log=log, kill_after=int(kill_after), pause_seconds=float(pause)
)
settings = Settings.from_env({"RUNHUB_HOME": home, "RUNHUB_APP_DB_URL": url})
moment = datetime.fromisoformat(now)
if what == "digests":
    send_due_digests(app_db, Warehouse(path=warehouse), transport, settings, moment)
else:
    execute_run(app_db, Warehouse(path=warehouse), transport, settings, what, moment)
"""


class LoggingOutbox(FileOutboxTransport):
    """The in-process twin of the worker's transport, for the rerun."""

    log: str

    def send(self, message: EmailMessage) -> None:
        super().send(message)
        with open(self.log, "a") as handle:
            handle.write(str(message["To"]) + "\n")


def start_worker(
    app_db: AppDatabase,
    tmp_path: Path,
    what: str,
    now: datetime,
    kill_after: int = 0,
    pause_seconds: float = 0.0,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER,
            app_db.url,
            str(tmp_path / "warehouse.duckdb"),
            str(tmp_path),
            str(tmp_path / "outbox"),
            str(tmp_path / "deliveries.log"),
            what,
            now.isoformat(),
            str(kill_after),
            str(pause_seconds),
        ],
        cwd=Path(__file__).resolve().parents[1],
        stderr=subprocess.PIPE,
    )


def deliveries(tmp_path: Path) -> Counter[str]:
    log = tmp_path / "deliveries.log"
    return Counter(log.read_text().splitlines()) if log.exists() else Counter()


def seed(app_db: AppDatabase, tmp_path: Path) -> set[str]:
    insert_rows(app_db, "projects", [project("p1")])
    emails = [f"lead{i:03d}@x.com" for i in range(RECIPIENTS)]
    build_warehouse(
        tmp_path / "warehouse.duckdb",
        events=[
            staged(i, "p1", "lead_created", NOW - timedelta(minutes=RECIPIENTS - i), email)
            for i, email in enumerate(emails)
        ],
    )
    queue_run(app_db, "run-1", "p1", "send_promo")
    return set(emails)


def rerun_after_the_lease_expires(app_db: AppDatabase, tmp_path: Path) -> None:
    later = NOW + LEASE_DURATION + timedelta(minutes=1)
    assert reap_expired_leases(app_db, later).requeued == ["run-1"]
    transport = LoggingOutbox(
        directory=str(tmp_path / "outbox"), log=str(tmp_path / "deliveries.log")
    )
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    report = execute_run(
        app_db, warehouse, transport, settings_for(app_db, tmp_path), "run-1", later
    )
    assert report.status == "succeeded"


def assert_exactly_once(app_db: AppDatabase, tmp_path: Path, audience: set[str]) -> None:
    sends = sends_of(app_db, "run-1")
    delivered = deliveries(tmp_path)
    assert max(delivered.values()) == 1, "a recipient received a second copy"
    assert set(sends) == audience, "a claimed recipient vanished or an extra one appeared"
    statuses = Counter(status for status, _ in sends.values())
    assert set(statuses) <= {"sent", "failed"}, statuses
    for email, (status, error) in sends.items():
        if status == "sent":
            assert delivered[email] == 1
        else:
            assert error is not None and error.startswith("interrupted: "), error
    sent = {email for email, (status, _) in sends.items() if status == "sent"}
    events = outcome_events(app_db)
    assert sorted(e.actor_email for e in events) == sorted(sent)
    result = result_of(app_db, "run-1")
    assert result["sent"] == len(sent) and result["failed"] == statuses["failed"]
    row = run_row(app_db, "run-1")
    assert row.status == "succeeded" and row.attempts == 2


def test_kill_between_delivery_and_mark(app_db: AppDatabase, tmp_path: Path) -> None:
    audience = seed(app_db, tmp_path)
    worker = start_worker(app_db, tmp_path, "run-1", NOW, kill_after=60)
    _, stderr = worker.communicate(timeout=300)
    assert worker.returncode == -signal.SIGKILL, stderr.decode()

    sends = sends_of(app_db, "run-1")
    claimed = [email for email, (status, _) in sends.items() if status == "claimed"]
    assert len(claimed) == 1 and deliveries(tmp_path)[claimed[0]] == 1
    assert sum(1 for status, _ in sends.values() if status == "sent") == 59
    assert run_row(app_db, "run-1").status == "running"

    rerun_after_the_lease_expires(app_db, tmp_path)

    assert_exactly_once(app_db, tmp_path, audience)
    # The interrupted one was delivered once and is recorded as failed, not resent.
    assert sends_of(app_db, "run-1")[claimed[0]] == ("failed", "interrupted: lease expired")
    assert sum(deliveries(tmp_path).values()) == RECIPIENTS


def test_kill_at_an_arbitrary_moment(app_db: AppDatabase, tmp_path: Path) -> None:
    audience = seed(app_db, tmp_path)
    worker = start_worker(app_db, tmp_path, "run-1", NOW, pause_seconds=0.02)
    deadline = time.monotonic() + 120
    while len(sends_of(app_db, "run-1")) < 30:
        assert worker.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=60)
    assert worker.returncode == -signal.SIGKILL

    rerun_after_the_lease_expires(app_db, tmp_path)

    assert_exactly_once(app_db, tmp_path, audience)
    interrupted = [e for e, (s, _) in sends_of(app_db, "run-1").items() if s == "failed"]
    assert len(interrupted) <= 1
    assert sum(deliveries(tmp_path).values()) >= RECIPIENTS - 1


def test_kill_during_the_digests(app_db: AppDatabase, tmp_path: Path) -> None:
    """Killed after the second digest left: no project gets a second digest of the day; the
    interrupted row ends failed once it is stale, and the rest go out on the rerun."""
    insert_rows(app_db, "projects", [project(f"p{i}") for i in range(5)])
    build_warehouse(tmp_path / "warehouse.duckdb")
    worker = start_worker(app_db, tmp_path, "digests", NOW, kill_after=2)
    _, stderr = worker.communicate(timeout=300)
    assert worker.returncode == -signal.SIGKILL, stderr.decode()

    transport = LoggingOutbox(
        directory=str(tmp_path / "outbox"), log=str(tmp_path / "deliveries.log")
    )
    settings = settings_for(app_db, tmp_path)
    warehouse = Warehouse(path=str(tmp_path / "warehouse.duckdb"))
    send_due_digests(app_db, warehouse, transport, settings, NOW + timedelta(minutes=5))
    report = send_due_digests(app_db, warehouse, transport, settings, NOW + timedelta(hours=2))
    assert report.interrupted == 1

    delivered = deliveries(tmp_path)
    assert len(delivered) == 5 and max(delivered.values()) == 1
    rows = app_db.fetch_all("select project_id, status, error from inhouse_emails order by 1")
    assert [row.project_id for row in rows] == [f"p{i}" for i in range(5)]
    statuses = Counter(row.status for row in rows)
    assert statuses == Counter({"sent": 4, "failed": 1})
    [failed] = [row for row in rows if row.status == "failed"]
    assert failed.error.startswith("interrupted: ")
