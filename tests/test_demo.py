"""`runhub demo` as a user runs it: the real CLI in a fresh RUNHUB_HOME on the embedded defaults.

Every number the summary prints is compared with the stores it claims to describe, so a summary
that drifts from the data fails here.
"""

from __future__ import annotations

import email
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from runhub_pipeline.definitions import WINDOW_JOB
from runhub_pipeline.partitions import RANGE_END_TAG, RANGE_START_TAG

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RUNHUB = str(Path(sys.executable).parent / "runhub")
# Per source table: (its rows received in the backfilled range, in the app database; its staged
# rows in the warehouse). received_at is fixed-width UTC text, so text bounds compare as times.
COUNTS = {
    "business_events": (
        "select count(*) from business_events where received_at >= ? and received_at < ?",
        "select count(*) from stg_business_events",
    ),
    "inhouse_analytics_events": (
        "select count(*) from inhouse_analytics_events where received_at >= ? and received_at < ?",
        "select count(*) from stg_analytics_events",
    ),
}


def embedded_env(home: Path) -> dict[str, str]:
    """The caller's environment without Run Hub or Dagster settings: only the embedded defaults."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("RUNHUB_") and name != "DAGSTER_HOME"
    }
    return {**env, "RUNHUB_HOME": str(home)}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One small demo (3 projects, 1 day) shared by the tests below: (RUNHUB_HOME, stdout)."""
    home = tmp_path_factory.mktemp("demo") / "home"
    result = subprocess.run(
        [RUNHUB, "demo", "--projects", "3", "--days", "1"],
        cwd=REPO,
        env=embedded_env(home),
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return home, result.stdout


def section(stdout: str, first: str, end: str) -> str:
    """The lines of `stdout` from the one starting with `first` to the one starting with `end`."""
    match = re.search(rf"^{re.escape(first)}.*?(?=^{re.escape(end)})", stdout, re.S | re.M)
    assert match, f"no section {first!r}..{end!r} in:\n{stdout}"
    return match.group(0)


def backfill_range(stdout: str) -> tuple[str, str]:
    """The range the demo says it backfilled, as printed: (`YYYY-MM-DD HH:MM`, the same)."""
    match = re.search(r"^3/5 backfill (.+) \.\. (.+) UTC \.\.\.$", stdout, re.M)
    assert match, stdout
    return match.group(1), match.group(2)


def count(text: str) -> int:
    return int(text.replace(",", ""))


def test_summary_counts_match_the_warehouse_and_the_app_database(demo: tuple[Path, str]) -> None:
    home, stdout = demo
    printed = {
        match["table"]: [count(match[n]) for n in ("source", "staged", "duplicates", "quarantined")]
        for match in re.finditer(
            r"^  (?P<table>\w+) +(?P<source>[\d,]+) +(?P<staged>[\d,]+) +(?P<duplicates>[\d,]+)"
            r" +(?P<quarantined>[\d,]+)$",
            stdout,
            re.M,
        )
    }
    assert set(printed) == set(COUNTS), stdout
    reasons_line = re.search(r"^  quarantined by reason: (.*)$", stdout, re.M)
    assert reasons_line, stdout
    printed_reasons = {
        reason: count(number)
        for reason, number in (item.rsplit(" ", 1) for item in reasons_line.group(1).split(", "))
    }

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as warehouse:
        quarantined = dict(
            warehouse.execute(
                "select source_table, count(*) from quarantined_events group by source_table"
            ).fetchall()
        )
        reasons = dict(
            warehouse.execute(
                "select reason, count(*) from quarantined_events group by reason"
            ).fetchall()
        )
        staged = {
            source: warehouse.execute(sql).fetchone()[0] for source, (_, sql) in COUNTS.items()
        }
    # The sends after the backfill add outcome events, received after the backfilled range.
    start, end = (f"{moment.replace(' ', 'T')}:00.000000Z" for moment in backfill_range(stdout))
    with sqlite3.connect(home / "app.db") as app:
        source_rows = {
            source: app.execute(sql, (start, end)).fetchone()[0]
            for source, (sql, _) in COUNTS.items()
        }

    assert printed_reasons == reasons
    for source, (rows, staged_rows, duplicates, quarantined_rows) in printed.items():
        assert staged_rows == staged[source] > 0
        assert quarantined_rows == quarantined.get(source, 0)
        assert rows == source_rows[source]
        assert rows == staged_rows + duplicates + quarantined_rows


def test_overview_matches_the_warehouse(demo: tuple[Path, str]) -> None:
    home, stdout = demo
    # The overview is as of the watermark: the end of the last window the demo backfilled.
    _, end = backfill_range(stdout)
    assert f"Run Hub overview as of {end} UTC (3 projects)" in stdout

    with sqlite3.connect(home / "app.db") as app:
        projects = app.execute("select project_id, name from projects").fetchall()
    blocks = re.split(r"^(?=\S.* \[\w+\] \()", stdout, flags=re.M)
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as warehouse:
        for project_id, name in projects:
            block = next(b for b in blocks if b.startswith(f"{name} [{project_id}]"))
            days = [date.fromisoformat(d) for d in re.findall(r"\d{4}-\d\d-\d\d", block)[:2]]
            sessions = re.search(r"^  sessions +([\d,]+) +([\d,]+)$", block, re.M)
            orders = re.search(r"^  orders +([\d,]+) +([\d,]+)$", block, re.M)
            assert sessions and orders, block
            for position, day in enumerate(days, start=1):
                row = warehouse.execute(
                    "select sessions, orders from business_kpi_daily"
                    " where project_id = ? and day = ?",
                    [project_id, day],
                ).fetchone()
                printed = (count(sessions.group(position)), count(orders.group(position)))
                assert printed == tuple(value or 0 for value in row or (0, 0)), (project_id, day)


def test_emails_are_in_the_outbox_by_action_and_locale(demo: tuple[Path, str]) -> None:
    home, stdout = demo
    sends = section(stdout, "4/5 send sensors ran once", "5/5")
    header = re.match(
        r"4/5 send sensors ran once: (\d+) e-mails to file outbox (\S+)$", sends, re.M
    )
    assert header, sends
    assert Path(header.group(2)) == home / "outbox"
    by_action_locale = {
        (action, locale): int(number)
        for action, locale, number in re.findall(r"^    (\w+) +([\w-]+) +(\d+)$", sends, re.M)
    }
    total = int(header.group(1))
    assert total > 0, "the demo's projects are due a digest, so something is sent"
    assert sum(by_action_locale.values()) == total

    files = sorted((home / "outbox").glob("*.eml"))
    assert len(files) == total
    with sqlite3.connect(home / "app.db") as app:
        run_actions = dict(app.execute("select id, action_id from workflow_runs").fetchall())
    actions: Counter[str] = Counter()
    for path in files:
        message = email.message_from_bytes(path.read_bytes())
        # Workflow e-mails name their run; the only other e-mails the demo sends are digests.
        run_id = message["X-Runhub-Run-Id"]
        actions[run_actions[run_id] if run_id else "daily_digest"] += 1
    printed_actions: Counter[str] = Counter()
    for (action, _locale), number in by_action_locale.items():
        printed_actions[action] += number
    assert printed_actions == actions


def test_run_is_recorded_in_the_dagster_instance_the_ui_opens(demo: tuple[Path, str]) -> None:
    home, stdout = demo
    dagster_home = home / "dagster"
    lines = stdout.splitlines()
    ui = lines[lines.index("Open the Dagster UI on the same instance:") + 1]
    assert ui.strip() == f"DAGSTER_HOME={dagster_home} RUNHUB_HOME={home} .venv/bin/dagster dev"

    run_id = re.search(r"^    run (\S+) succeeded$", stdout, re.M)
    assert run_id, stdout
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        run = instance.get_run_by_id(run_id.group(1))
        assert run is not None
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.job_name == WINDOW_JOB
        assert {RANGE_START_TAG, RANGE_END_TAG} <= set(run.tags)
        assert (
            instance.get_latest_materialization_event(dg.AssetKey("business_kpi_daily")) is not None
        )


def test_printed_warehouse_query_works(demo: tuple[Path, str]) -> None:
    home, stdout = demo
    lines = stdout.splitlines()
    command = lines[lines.index("Query the warehouse (safe while runs write):") + 1]
    assert str(home / "warehouse.duckdb") in command
    result = subprocess.run(
        shlex.split(command), cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "project_id" in result.stdout
