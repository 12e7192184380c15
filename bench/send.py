"""(e) A 1,000-recipient send: render and deliver to a local SMTP server.

A `send_promo` workflow run of the sensor data set's project b00001 (1,000 leads) is executed by
`sends.runs.execute_run`, exactly as the `workflow_send` job does: lease, audience from the
warehouse snapshot, policy, then per recipient claim, render, SMTP over one connection, mark sent.
The server is aiosmtpd's Sink in its own process, so it does not share this process's GIL.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg

from bench.sensor_tick import SEND_PROJECT
from bench.workload import BenchHome
from tests.smtp_server import free_port

SINK = "aiosmtpd.handlers.Sink"


@dataclass(frozen=True)
class SendSample:
    seconds: float
    sent: int
    status: str | None
    note: str


@contextmanager
def smtp_sink() -> Iterator[str]:
    """aiosmtpd accepting and discarding every message; yields its smtp:// URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}", "-c", SINK],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the local SMTP server did not start") from None
                time.sleep(0.1)
        yield f"smtp://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            # aiosmtpd sometimes ignores SIGTERM while a connection lingers.
            process.kill()
            process.wait()


def measure_send(home: BenchHome, smtp_url: str) -> SendSample:
    """Queue and execute one promo run to every lead of the send project."""
    from runhub_pipeline.resources.app_db import AppDatabase
    from runhub_pipeline.resources.email import SmtpTransport
    from runhub_pipeline.resources.warehouse import Warehouse, utc_now
    from runhub_pipeline.sends.runs import execute_run
    from runhub_pipeline.settings import Settings

    run_id = str(uuid.uuid4())
    params = {"title": "Spring sale", "body": "Everything 20 % off this week."}
    with psycopg.connect(home.app_db_url) as connection:
        # Earlier rounds' runs and sends would trigger the cooldown and recently-e-mailed rules.
        connection.execute("delete from workflow_sends where project_id = %s", (SEND_PROJECT,))
        connection.execute("delete from workflow_runs where project_id = %s", (SEND_PROJECT,))
        connection.execute(
            "insert into workflow_runs (id, project_id, action_id, status, idempotency_key,"
            " params, attempts, created_at) values (%s, %s, 'send_promo', 'queued', %s, %s, 0,"
            " now())",
            (run_id, SEND_PROJECT, f"bench:{run_id}", json.dumps(params)),
        )
    settings = Settings.from_env(home.environ())
    app_db = AppDatabase(url=settings.app_db_url)
    warehouse = Warehouse(path=str(settings.warehouse_path))
    transport = SmtpTransport(url=smtp_url)
    started = time.perf_counter()
    report = execute_run(app_db, warehouse, transport, settings, run_id, utc_now())
    seconds = time.perf_counter() - started
    return SendSample(seconds, report.sent_now, report.status, report.note)
