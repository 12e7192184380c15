"""Run Hub settings, read from the environment only by the CLI and the Dagster Definitions.

Library modules take a `Settings` (or the single values they need) as arguments; nothing reads the
environment at import time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

DEFAULT_PARTITIONS_START = "2026-01-01T00:00Z"
DEFAULT_MAIL_FROM = "Run Hub <no-reply@runhub.localhost>"
DEFAULT_UNSUBSCRIBE_URL = "http://localhost:8080/unsubscribe"
WINDOW = timedelta(minutes=15)


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot use; the message is one line for the user."""


# DuckDB's memory limit per warehouse connection; beyond it, joins and sorts spill to disk.
DEFAULT_WAREHOUSE_MEMORY = "512MB"


@dataclass(frozen=True)
class Settings:
    home: Path
    app_db_url: str
    warehouse_path: Path
    warehouse_memory_limit: str
    dagster_home: Path
    partitions_start: datetime
    ingest_lag: timedelta
    late_lookback: timedelta
    mail_from: str
    unsubscribe_url: str
    smtp_url: str | None

    @property
    def outbox_dir(self) -> Path:
        return self.home / "outbox"

    @property
    def data_docs_dir(self) -> Path:
        return self.home / "data_docs"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("RUNHUB_HOME") or "./.runhub").expanduser().absolute()
        app_db_url = env.get("RUNHUB_APP_DB_URL") or f"sqlite:///{home / 'app.db'}"
        warehouse = Path(env.get("RUNHUB_WAREHOUSE") or home / "warehouse.duckdb").expanduser()
        dagster_home = Path(env.get("DAGSTER_HOME") or home / "dagster").expanduser()
        start = parse_utc(env.get("RUNHUB_PARTITIONS_START") or DEFAULT_PARTITIONS_START)
        if not is_window_start(start):
            raise SettingsError(
                f"RUNHUB_PARTITIONS_START must be on a 15-minute boundary, got {start.isoformat()}"
            )
        return cls(
            home=home,
            app_db_url=app_db_url,
            warehouse_path=warehouse.absolute(),
            warehouse_memory_limit=env.get("RUNHUB_WAREHOUSE_MEMORY") or DEFAULT_WAREHOUSE_MEMORY,
            dagster_home=dagster_home.absolute(),
            partitions_start=start,
            ingest_lag=parse_duration(env.get("RUNHUB_INGEST_LAG") or "2m", "RUNHUB_INGEST_LAG"),
            late_lookback=parse_duration(
                env.get("RUNHUB_LATE_LOOKBACK") or "48h", "RUNHUB_LATE_LOOKBACK"
            ),
            mail_from=env.get("RUNHUB_MAIL_FROM") or DEFAULT_MAIL_FROM,
            unsubscribe_url=env.get("RUNHUB_UNSUBSCRIBE_URL") or DEFAULT_UNSUBSCRIBE_URL,
            smtp_url=env.get("RUNHUB_SMTP_URL") or None,
        )


def parse_utc(text: str) -> datetime:
    """Parse an ISO-8601 time; a missing offset means UTC. Returns an aware UTC datetime."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise SettingsError(f"not an ISO-8601 time: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, name: str = "duration") -> timedelta:
    """Parse `90s`, `2m`, `48h`, `1d` or plain seconds."""
    match = _DURATION.match(text)
    if not match:
        raise SettingsError(f"{name} must look like 90s, 2m, 48h or 1d, got {text!r}")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def floor_to_window(moment: datetime) -> datetime:
    """The start of the 15-minute UTC window that contains `moment`."""
    moment = moment.astimezone(UTC)
    return moment.replace(minute=moment.minute - moment.minute % 15, second=0, microsecond=0)


def is_window_start(moment: datetime) -> bool:
    """Whether `moment` is on a 15-minute UTC boundary, i.e. starts a window."""
    return moment == floor_to_window(moment)


def path_problem(error: OSError) -> str:
    """Why a home directory (RUNHUB_HOME, DAGSTER_HOME) could not be created, for the user."""
    # mkdir(exist_ok=True) on an existing regular file says only "File exists".
    if isinstance(error, FileExistsError):
        return "it is a file, not a directory"
    return error.strerror or str(error)
