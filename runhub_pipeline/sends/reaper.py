"""The reaper and retention: re-queue (or fail) runs whose lease expired, prune old sends."""

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.sends.lifecycle import end_interrupted_claims
from runhub_pipeline.sends.policy import (
    CLAIMED,
    FAILED,
    MAX_ATTEMPTS,
    QUEUED,
    RUNNING,
    SEND_RETENTION,
)
from runhub_pipeline.sends.stored import db_time, iso, parse_int, parse_time


@dataclass(frozen=True)
class ReapReport:
    requeued: list[str]
    failed: list[str]


def reap_expired_leases(app_db: AppDatabase, now: datetime) -> ReapReport:
    """Re-queue running runs whose lease expired; fail those that used all MAX_ATTEMPTS.

    Claims the dead worker left `claimed` end `failed` (interrupted) in the same transaction.
    """
    requeued: list[str] = []
    failed: list[str] = []
    with app_db.begin() as connection:
        rows = connection.execute(
            sa.text(
                "select id, attempts, lease_owner, lease_expires_at from workflow_runs"
                " where status = :running"
            ),
            {"running": RUNNING},
        ).all()
        for row in rows:
            expires = parse_time(row.lease_expires_at)
            if expires is not None and expires >= now:
                continue
            attempts = parse_int(row.attempts)
            detail = (
                f"lease of {row.lease_owner} expired at {iso(expires)}"
                f" on attempt {attempts} of {MAX_ATTEMPTS}"
            )
            give_up = attempts >= MAX_ATTEMPTS
            connection.execute(
                sa.text(
                    "update workflow_runs set status = :status, error = :error,"
                    " lease_owner = null, lease_expires_at = null,"
                    " completed_at = case when :give_up then :now else completed_at end"
                    " where id = :run_id and status = :running"
                ),
                {
                    "status": FAILED if give_up else QUEUED,
                    "error": f"{detail}; {'gave up' if give_up else 're-queued'}",
                    "give_up": give_up,
                    "now": db_time(app_db, now),
                    "run_id": row.id,
                    "running": RUNNING,
                },
            )
            (failed if give_up else requeued).append(row.id)
        end_interrupted_claims(connection, [*requeued, *failed], "lease expired")
    return ReapReport(requeued=requeued, failed=failed)


def prune_sends(app_db: AppDatabase, now: datetime) -> int:
    """Delete `workflow_sends` rows created more than SEND_RETENTION ago; returns how many."""
    with app_db.begin() as connection:
        deleted = connection.execute(
            sa.text("delete from workflow_sends where created_at < :cutoff and status <> :claimed"),
            {"cutoff": db_time(app_db, now - SEND_RETENTION), "claimed": CLAIMED},
        )
    return int(deleted.rowcount)
