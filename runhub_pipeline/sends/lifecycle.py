"""A workflow run's lease (CONTRACT §7): start, heartbeat, finish, and ending interrupted claims.

Whoever starts a queued run takes its lease (`lease_owner`, `lease_expires_at`) and extends it
every HEARTBEAT_EVERY recipients; a worker that lost the lease must stop (`LeaseLostError`).
"""

import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.sends.locales import normalize_locale
from runhub_pipeline.sends.policy import (
    CLAIMED,
    FAIL_INTERRUPTED,
    FAILED,
    LEASE_DURATION,
    MAX_ATTEMPTS,
    QUEUED,
    RUN_COOLDOWNS,
    RUNNING,
    InvalidRunError,
    RunParams,
    action_label,
    failure,
    parse_params,
)
from runhub_pipeline.sends.stored import coarse_since, db_time, lock_key, parse_int, parse_time

Clock = Callable[[], datetime]


class LeaseLostError(RuntimeError):
    """Another worker holds the run now (the reaper re-queued it); this worker must stop."""


@dataclass(frozen=True)
class StartedRun:
    """A run this worker holds the lease of."""

    run_id: str
    project_id: str
    action_id: str
    params: RunParams
    attempt: int
    owner: str
    project_name: str
    locale: str

    @property
    def label(self) -> str:
        return action_label(self.action_id, self.params)


@dataclass(frozen=True)
class NotStarted:
    """Why a run was not started; `failed` when this refusal failed the run (it is final)."""

    reason: str
    failed: bool = False


def default_owner() -> str:
    """A lease owner that names this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def advancing_clock(now: datetime) -> Clock:
    """`now`, then moving forward with the monotonic clock: leases and sent_at during a long run."""
    started = time.monotonic()
    return lambda: now + timedelta(seconds=time.monotonic() - started)


_SELECT_RUN = sa.text(
    "select id, project_id, action_id, status, attempts, params, created_at"
    " from workflow_runs where id = :run_id"
)
_FAIL_QUEUED = sa.text(
    "update workflow_runs set status = :failed, error = :error, completed_at = :now"
    " where id = :run_id and status = :queued"
)


def fail_queued_run(app_db: AppDatabase, run_id: str, error: str, now: datetime) -> bool:
    """Fail a run that is still queued, with its reason on the row; False if it was not queued."""
    with app_db.begin() as connection:
        return _fail_queued(app_db, connection, run_id, error, now)


def _fail_queued(
    app_db: AppDatabase, connection: Connection, run_id: str, error: str, now: datetime
) -> bool:
    updated = connection.execute(
        _FAIL_QUEUED,
        {
            "failed": FAILED,
            "queued": QUEUED,
            "error": error,
            "now": db_time(app_db, now),
            "run_id": run_id,
        },
    )
    return updated.rowcount == 1


def start_run(
    app_db: AppDatabase, run_id: str, owner: str, now: datetime
) -> StartedRun | NotStarted:
    """Take a queued run's lease; returns the started run, or why it was not started.

    A first attempt honours the action's run cooldown (CONTRACT §7); a run with an unknown action
    or malformed params, or of an unknown project, is failed with the reason on its row.
    """
    with app_db.begin() as connection:
        row = connection.execute(_SELECT_RUN, {"run_id": run_id}).first()
        if row is None:
            return NotStarted(f"no workflow run {run_id!r}")
        if row.status != QUEUED:
            return NotStarted(f"run {run_id} is {row.status}, not queued")
        lock_key(app_db, connection, f"workflow_runs:{row.project_id}:{row.action_id}")
        attempts = parse_int(row.attempts)
        project = connection.execute(
            sa.text("select name, locale from projects where project_id = :project_id"),
            {"project_id": row.project_id},
        ).first()
        try:
            params = parse_params(row.action_id, row.params)
            if project is None:
                raise InvalidRunError(f"unknown project {row.project_id!r}")
            if attempts >= MAX_ATTEMPTS:
                raise InvalidRunError(f"gave up after {attempts} attempts")
            if attempts == 0:
                _check_run_cooldown(app_db, connection, row, now)
        except InvalidRunError as error:
            _fail_queued(app_db, connection, run_id, str(error), now)
            return NotStarted(f"run {run_id} failed: {error}", failed=True)
        started = connection.execute(
            sa.text(
                "update workflow_runs set status = :running, attempts = :attempt,"
                " lease_owner = :owner, lease_expires_at = :expires,"
                " started_at = coalesce(started_at, :now), error = null"
                " where id = :run_id and status = :queued"
            ),
            {
                "running": RUNNING,
                "queued": QUEUED,
                "attempt": attempts + 1,
                "owner": owner,
                "expires": db_time(app_db, now + LEASE_DURATION),
                "now": db_time(app_db, now),
                "run_id": run_id,
            },
        )
        if started.rowcount != 1:
            return NotStarted(f"run {run_id} was started by another worker")
        # Claims an earlier attempt left behind were interrupted between claim and mark.
        end_interrupted_claims(
            connection, [run_id], f"attempt {attempts} stopped before marking it"
        )
    return StartedRun(
        run_id=run_id,
        project_id=row.project_id,
        action_id=row.action_id,
        params=params,
        attempt=attempts + 1,
        owner=owner,
        project_name=(project.name or "").strip() or row.project_id,
        locale=normalize_locale(params.locale or project.locale),
    )


def _check_run_cooldown(
    app_db: AppDatabase, connection: Connection, run: sa.Row[Any], now: datetime
) -> None:
    """Raise InvalidRunError when another run of the action blocks this one (CONTRACT §7).

    A run blocks when it is not failed, was created within the cooldown, and either has started
    (running, succeeded, or re-queued after an attempt) or is queued ahead of this one.
    """
    cooldown = RUN_COOLDOWNS[run.action_id]
    mine = (parse_time(run.created_at) or now, run.id)
    others = connection.execute(
        sa.text(
            "select id, status, attempts, created_at from workflow_runs"
            " where project_id = :project_id and action_id = :action_id and id <> :run_id"
            " and (status is null or status <> :failed) and created_at >= :since"
        ),
        {
            "project_id": run.project_id,
            "action_id": run.action_id,
            "run_id": run.id,
            "failed": FAILED,
            "since": coarse_since(app_db, now - cooldown),
        },
    )
    for other in others:
        created = parse_time(other.created_at)
        if created is None or created < now - cooldown:
            continue
        ahead = (
            other.status != QUEUED or parse_int(other.attempts) > 0 or (created, other.id) < mine
        )
        if ahead:
            minutes = int(cooldown.total_seconds() // 60)
            raise InvalidRunError(
                f"cooldown: {run.action_id} run {other.id} ({other.status}) was created at"
                f" {created.isoformat()}, less than {minutes} minutes ago"
            )


def heartbeat(app_db: AppDatabase, run: StartedRun, now: datetime) -> None:
    """Extend the lease; raises LeaseLostError if this worker no longer holds it."""
    with app_db.begin() as connection:
        extended = connection.execute(
            sa.text(
                "update workflow_runs set lease_expires_at = :expires"
                " where id = :run_id and lease_owner = :owner and status = :running"
            ),
            {
                "expires": db_time(app_db, now + LEASE_DURATION),
                "run_id": run.run_id,
                "owner": run.owner,
                "running": RUNNING,
            },
        )
    if extended.rowcount != 1:
        raise LeaseLostError(f"run {run.run_id}: lease of {run.owner} expired and was taken over")


def finish_run(
    app_db: AppDatabase,
    run: StartedRun,
    status: str,
    result: Mapping[str, Any],
    error: str | None,
    now: datetime,
) -> bool:
    """Record the outcome; False if the lease was lost meanwhile (the new holder finishes it)."""
    with app_db.begin() as connection:
        finished = connection.execute(
            sa.text(
                "update workflow_runs set status = :status, result = :result, error = :error,"
                " completed_at = :now, lease_expires_at = null"
                " where id = :run_id and lease_owner = :owner and status = :running"
            ),
            {
                "status": status,
                "result": json.dumps(result, sort_keys=True),
                "error": error,
                "now": db_time(app_db, now),
                "run_id": run.run_id,
                "owner": run.owner,
                "running": RUNNING,
            },
        )
    return finished.rowcount == 1


def end_interrupted_claims(connection: Connection, run_ids: Sequence[str], detail: str) -> int:
    if not run_ids:
        return 0
    ended = connection.execute(
        sa.text(
            "update workflow_sends set status = :failed, error = :error"
            " where run_id in :run_ids and status = :claimed"
        ).bindparams(sa.bindparam("run_ids", expanding=True)),
        {
            "failed": FAILED,
            "claimed": CLAIMED,
            "error": failure(FAIL_INTERRUPTED, detail),
            "run_ids": list(run_ids),
        },
    )
    return int(ended.rowcount)
