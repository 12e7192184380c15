"""One recipient of a run: claim it, then mark it sent (with its outcome event) or failed.

Exactly once: each recipient is claimed in `workflow_sends` (key `workflow:{run_id}:{email}`,
unique) in its own transaction before the e-mail is handed to the transport, and marked `sent`
together with its outcome business event right after (see `sends.runs`).
"""

import json
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.sends.lifecycle import StartedRun
from runhub_pipeline.sends.policy import (
    CLAIMED,
    FAIL_INTERRUPTED,
    FAILED,
    OUTCOME_EVENTS,
    RECIPIENT_COOLDOWN,
    SENT,
    SKIP_RECENTLY_EMAILED,
    SKIP_SUPPRESSED,
    outcome_key,
    send_key,
)
from runhub_pipeline.sends.recipients import Recipient
from runhub_pipeline.sends.stored import db_time, lock_key, parse_time


def claim(app_db: AppDatabase, run: StartedRun, email: str, now: datetime) -> str:
    """Claim `email` for this run: returns CLAIMED, a skip reason, or the status of an earlier
    claim of the same key. The suppression list and the 24-hour cooldown are checked again in
    the claiming transaction, so concurrent runs of a project never both mail an address."""
    key = send_key(run.run_id, email)
    with app_db.begin() as connection:
        lock_key(app_db, connection, f"workflow_sends:{run.project_id}:{email}")
        existing = connection.execute(
            sa.text("select status from workflow_sends where idempotency_key = :key"),
            {"key": key},
        ).first()
        if existing is not None:
            return str(existing.status)
        if suppressed_among(connection, run.project_id, [email]):
            return SKIP_SUPPRESSED
        if recently_emailed_among(app_db, connection, run, [email], now):
            return SKIP_RECENTLY_EMAILED
        connection.execute(
            sa.text(
                "insert into workflow_sends"
                " (project_id, run_id, action_id, email, status, idempotency_key, created_at)"
                " values (:project_id, :run_id, :action_id, :email, :claimed, :key, :now)"
            ),
            {
                "project_id": run.project_id,
                "run_id": run.run_id,
                "action_id": run.action_id,
                "email": email,
                "claimed": CLAIMED,
                "key": key,
                "now": db_time(app_db, now),
            },
        )
    return CLAIMED


def mark_sent(app_db: AppDatabase, run: StartedRun, email: str, now: datetime) -> bool:
    """Mark a claim sent and record its outcome business event, in one transaction."""
    with app_db.begin() as connection:
        marked = connection.execute(
            sa.text(
                "update workflow_sends set status = :sent, sent_at = :now, error = null"
                " where idempotency_key = :key and status = :claimed"
            ),
            {
                "sent": SENT,
                "claimed": CLAIMED,
                "now": db_time(app_db, now),
                "key": send_key(run.run_id, email),
            },
        )
        if marked.rowcount != 1:
            return False
        key = outcome_key(run.run_id, email)
        recorded = connection.execute(
            sa.text(
                "select 1 from business_events"
                " where project_id = :project_id and idempotency_key = :key"
            ),
            {"project_id": run.project_id, "key": key},
        ).first()
        if recorded is None:
            connection.execute(
                sa.text(
                    "insert into business_events"
                    " (project_id, event_type, occurred_at, idempotency_key, actor_email, payload)"
                    " values (:project_id, :event_type, :now, :key, :email, :payload)"
                ),
                {
                    "project_id": run.project_id,
                    "event_type": OUTCOME_EVENTS[run.action_id],
                    "now": db_time(app_db, now),
                    "key": key,
                    "email": email,
                    "payload": json.dumps({"run_id": run.run_id}),
                },
            )
    return True


def mark_failed(app_db: AppDatabase, run: StartedRun, email: str, error: str) -> None:
    with app_db.begin() as connection:
        connection.execute(
            sa.text(
                "update workflow_sends set status = :failed, error = :error"
                " where idempotency_key = :key and status = :claimed"
            ),
            {
                "failed": FAILED,
                "claimed": CLAIMED,
                "error": error,
                "key": send_key(run.run_id, email),
            },
        )


def suppressed_among(connection: Connection, project_id: str, emails: Sequence[str]) -> set[str]:
    rows = connection.execute(
        sa.text(
            "select lower(trim(email)) as email from inhouse_email_suppressions"
            " where project_id = :project_id and lower(trim(email)) in :emails"
        ).bindparams(sa.bindparam("emails", expanding=True)),
        {"project_id": project_id, "emails": list(emails)},
    )
    return {row.email for row in rows}


def recently_emailed_among(
    app_db: AppDatabase,
    connection: Connection,
    run: StartedRun,
    emails: Sequence[str],
    now: datetime,
) -> set[str]:
    """Addresses with a workflow e-mail of the project, from another run, claimed in the last 24
    hours that is `claimed`, `sent`, or an interrupted claim (it may have gone out)."""
    rows = connection.execute(
        sa.text(
            "select distinct email from workflow_sends"
            " where project_id = :project_id and email in :emails and run_id <> :run_id"
            " and created_at >= :since"
            " and (status in (:claimed, :sent) or (status = :failed and error like :interrupted))"
        ).bindparams(sa.bindparam("emails", expanding=True)),
        {
            "project_id": run.project_id,
            "emails": list(emails),
            "run_id": run.run_id,
            "since": db_time(app_db, now - RECIPIENT_COOLDOWN),
            "claimed": CLAIMED,
            "sent": SENT,
            "failed": FAILED,
            "interrupted": f"{FAIL_INTERRUPTED}%",
        },
    )
    return {row.email for row in rows}


def paid_since_checkout(
    app_db: AppDatabase, run: StartedRun, batch: Sequence[Recipient], now: datetime
) -> set[str]:
    """Recovery recipients who paid (same address or checkout session) by `now`, read from the
    app database itself: the warehouse only knows payments up to its watermark."""
    if not batch:
        return set()
    earliest = min(recipient.qualified_at for recipient in batch)
    rows = app_db.fetch_all(
        "select lower(trim(actor_email)) as email, trim(session_id) as session_id, occurred_at"
        " from business_events"
        " where received_at >= :since and trim(project_id) = :project_id"
        " and lower(trim(event_type)) = 'payment_succeeded'",
        # An event's occurred_at is at most a day after its received_at (CONTRACT §4).
        {"since": db_time(app_db, earliest - timedelta(days=1)), "project_id": run.project_id},
    )
    paid: set[str] = set()
    by_session = {s: r.email for r in batch for s in r.session_ids}
    starts = {r.email: r.qualified_at for r in batch}
    for row in rows:
        occurred = parse_time(row.occurred_at)
        if occurred is None or occurred > now:
            continue
        for email in (row.email, by_session.get(row.session_id)):
            if email in starts and occurred >= starts[email]:
                paid.add(email)
    return paid
