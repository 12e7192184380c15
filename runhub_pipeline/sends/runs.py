"""Workflow runs (CONTRACT §7): lease, exactly-once sends, outcome events, reaper and retention.

A run moves `queued -> running -> succeeded | failed`. Whoever starts it takes a lease
(`lease_owner`, `lease_expires_at`) and extends it every HEARTBEAT_EVERY recipients; the reaper
re-queues a run whose lease expired and fails it after MAX_ATTEMPTS.

Exactly once: each recipient is claimed in `workflow_sends` (key `workflow:{run_id}:{email}`,
unique) in its own transaction before the e-mail is handed to the transport, and marked `sent`
together with its outcome business event right after. A crash between the two leaves the claim
`claimed`; the next attempt of the run (or the reaper) ends it `failed` with reason
`interrupted`, and it is never sent again: the transport may or may not have delivered it, and a
second copy is worse than none.
"""

import json
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runhub_pipeline.assets.ingest import window_bound
from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.email import EmailDeliveryError, EmailSender, EmailTransport
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.sends.locales import normalize_locale
from runhub_pipeline.sends.message import (
    address_domain,
    build_message,
    make_message_id,
    unsubscribe_link,
)
from runhub_pipeline.sends.policy import (
    CLAIMED,
    FAIL_BAD_MESSAGE,
    FAIL_DELIVERY,
    FAIL_INTERRUPTED,
    FAILED,
    HEARTBEAT_EVERY,
    LEASE_DURATION,
    MAX_ATTEMPTS,
    MAX_CONSECUTIVE_DELIVERY_FAILURES,
    OUTCOME_EVENTS,
    QUEUED,
    RECIPIENT_CAP,
    RECIPIENT_COOLDOWN,
    RECOVER_ABANDONED,
    RUN_COOLDOWNS,
    RUNNING,
    SEND_RETENTION,
    SENT,
    SKIP_CAPPED,
    SKIP_INVALID_ADDRESS,
    SKIP_PAID,
    SKIP_RECENTLY_EMAILED,
    SKIP_SUPPRESSED,
    SKIP_TRANSPORT_DOWN,
    SUCCEEDED,
    InvalidRunError,
    RunParams,
    action_label,
    address_problem,
    email_kind,
    failure,
    failure_reason,
    outcome_key,
    parse_params,
    send_key,
)
from runhub_pipeline.sends.recipients import Recipient, audience, named_audience
from runhub_pipeline.sends.render import RenderError, render_email
from runhub_pipeline.settings import Settings, parse_utc
from runhub_pipeline.watermark import current_watermark

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


@dataclass
class RunReport:
    """What one execution of a run did; `status` None means it did not start (see `note`)."""

    run_id: str
    status: str | None
    note: str = ""
    action: str = ""
    locale: str = ""
    sent_now: int = 0
    result: dict[str, Any] = field(default_factory=dict)


# --- values as each dialect stores them --------------------------------------------------------


def db_time(app_db: AppDatabase, moment: datetime) -> object:
    """A time to bind: fixed-width UTC text on SQLite (so text comparisons order as times)."""
    return window_bound(app_db, moment)


def coarse_since(app_db: AppDatabase, moment: datetime) -> object:
    """A lower bound safe against app-written times: on SQLite they may be any ISO-8601 text, so
    compare with a date a day earlier and filter exactly in Python after parsing."""
    if app_db.dialect == "sqlite":
        return (moment - timedelta(days=1)).date().isoformat()
    return moment


def parse_time(value: object) -> datetime | None:
    """A stored time as an aware UTC datetime; None when missing or not a time."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, str) and value.strip():
        try:
            return parse_utc(value)
        except ValueError:
            return None
    return None


def parse_json(value: object) -> dict[str, Any]:
    """A JSON object column (jsonb on PostgreSQL, text on SQLite); {} when absent or garbage."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str | bytes):
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def parse_flag(value: object) -> bool:
    """A boolean column as the app may have stored it (true, 1, 't', 'yes' ...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, str):
        return value.strip().lower() in ("1", "t", "true", "y", "yes", "on")
    return False


def iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def default_owner() -> str:
    """A lease owner that names this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def advancing_clock(now: datetime) -> Clock:
    """`now`, then moving forward with the monotonic clock: leases and sent_at during a long run."""
    started = time.monotonic()
    return lambda: now + timedelta(seconds=time.monotonic() - started)


def lock_key(app_db: AppDatabase, connection: Connection, key: str) -> None:
    """Serialize writers of `key` on PostgreSQL; SQLite writers already queue at BEGIN."""
    if app_db.dialect == "postgresql":
        connection.execute(sa.text("select pg_advisory_xact_lock(hashtext(:key))"), {"key": key})


# --- run lifecycle ------------------------------------------------------------------------------

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
        attempts = _int(row.attempts)
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
            connection.execute(
                _FAIL_QUEUED,
                {
                    "failed": FAILED,
                    "queued": QUEUED,
                    "error": str(error),
                    "now": db_time(app_db, now),
                    "run_id": run_id,
                },
            )
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
        _end_interrupted_claims(
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


def _int(value: object) -> int:
    try:
        return int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


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
        ahead = other.status != QUEUED or _int(other.attempts) > 0 or (created, other.id) < mine
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


def _end_interrupted_claims(connection: Connection, run_ids: Sequence[str], detail: str) -> int:
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


# --- one recipient: claim, send, mark --------------------------------------------------------


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
        if _suppressed(connection, run.project_id, [email]):
            return SKIP_SUPPRESSED
        if _recently_emailed(app_db, connection, run, [email], now):
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


def _suppressed(connection: Connection, project_id: str, emails: Sequence[str]) -> set[str]:
    rows = connection.execute(
        sa.text(
            "select lower(trim(email)) as email from inhouse_email_suppressions"
            " where project_id = :project_id and lower(trim(email)) in :emails"
        ).bindparams(sa.bindparam("emails", expanding=True)),
        {"project_id": project_id, "emails": list(emails)},
    )
    return {row.email for row in rows}


def _recently_emailed(
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


def _paid_since_checkout(
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


# --- a whole run --------------------------------------------------------------------------------


@dataclass
class Plan:
    """Who this attempt mails, and every recipient it will not, by reason."""

    to_send: list[Recipient]
    recipients: int
    skipped: Counter[str]
    as_of: datetime | None


def plan_run(app_db: AppDatabase, warehouse: Warehouse, run: StartedRun, now: datetime) -> Plan:
    """The run's audience with the policy applied: invalid, suppressed, recently e-mailed and
    capped recipients skipped; recipients this run already claimed are not mailed again."""
    with warehouse.reader() as connection:
        as_of = current_watermark(connection)
        skipped: Counter[str] = Counter()
        if run.params.emails is not None:
            named = named_audience(connection, run.project_id, run.params.emails)
            candidates = named.recipients
            skipped.update({reason: len(emails) for reason, emails in named.rejected.items()})
        else:
            candidates = audience(connection, run.project_id, run.action_id, now)
    total = len(candidates) + sum(skipped.values())
    valid = []
    for recipient in candidates:
        if address_problem(recipient.email) is None:
            valid.append(recipient)
        else:
            skipped[SKIP_INVALID_ADDRESS] += 1
    emails = [recipient.email for recipient in valid]
    with app_db.begin() as connection:
        own = {
            row.email
            for row in connection.execute(
                sa.text("select email from workflow_sends where run_id = :run_id"),
                {"run_id": run.run_id},
            )
        }
        suppressed: set[str] = set()
        recent: set[str] = set()
        for chunk in _chunks(emails, 500):
            suppressed |= _suppressed(connection, run.project_id, chunk)
            recent |= _recently_emailed(app_db, connection, run, chunk, now)
    to_send: list[Recipient] = []
    slots = RECIPIENT_CAP - len(own)
    for recipient in valid:
        if recipient.email in own:
            continue
        if recipient.email in suppressed:
            skipped[SKIP_SUPPRESSED] += 1
        elif recipient.email in recent:
            skipped[SKIP_RECENTLY_EMAILED] += 1
        elif slots <= 0:
            skipped[SKIP_CAPPED] += 1
        else:
            to_send.append(recipient)
            slots -= 1
    return Plan(to_send=to_send, recipients=total, skipped=skipped, as_of=as_of)


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def compose(run: StartedRun, email: str, settings: Settings, now: datetime) -> EmailMessage:
    """The marketing e-mail of `run` to `email`, with its one-click unsubscribe link."""
    link = unsubscribe_link(settings.unsubscribe_url, run.project_id, email)
    context: dict[str, Any] = {"project_name": run.project_name, "unsubscribe_url": link}
    kind = email_kind(run.action_id, run.params)
    if kind in ("promo", "update"):
        context.update(run.params.content)
    rendered = render_email(kind, run.locale, context)
    key = send_key(run.run_id, email)
    return build_message(
        from_addr=settings.mail_from,
        to_addr=email,
        subject=rendered.subject,
        rendered=rendered,
        message_id=make_message_id(key, address_domain(settings.mail_from)),
        marketing=True,
        unsubscribe_url=link,
        headers={"X-Runhub-Run-Id": run.run_id},
        date=now,
    )


def execute_run(
    app_db: AppDatabase,
    warehouse: Warehouse,
    transport: EmailTransport,
    settings: Settings,
    run_id: str,
    now: datetime,
    *,
    owner: str | None = None,
    clock: Clock | None = None,
) -> RunReport:
    """Start a queued run, mail its recipients exactly once and record the outcome.

    `now` is the wall-clock time the policy windows are measured from; `clock` (default: `now`
    advancing with the monotonic clock) times leases and sends during the loop.
    """
    clock = clock or advancing_clock(now)
    if not warehouse.published_path.exists():
        return RunReport(run_id, None, note="the warehouse is not built yet; the run stays queued")
    started = start_run(app_db, run_id, owner or default_owner(), now)
    if isinstance(started, NotStarted):
        return RunReport(run_id, FAILED if started.failed else None, note=started.reason)
    run = started
    report = RunReport(run_id=run_id, status=RUNNING, action=run.label, locale=run.locale)
    try:
        plan = plan_run(app_db, warehouse, run, now)
        stopped = _send_all(app_db, transport, settings, run, plan, report, clock)
    except LeaseLostError as lost:
        report.status, report.note = None, str(lost)
        return report
    except Exception as error:
        message = f"{type(error).__name__}: {error}"
        finish_run(app_db, run, FAILED, {"attempt": run.attempt}, message, clock())
        report.status, report.note = FAILED, message
        raise
    report.result = _result(app_db, run, plan)
    report.status, error_text = _final_status(report.result, stopped)
    report.note = error_text or ""
    if not finish_run(app_db, run, report.status, report.result, error_text, clock()):
        report.status, report.note = None, f"run {run_id}: lease lost before finishing"
    return report


def _send_all(
    app_db: AppDatabase,
    transport: EmailTransport,
    settings: Settings,
    run: StartedRun,
    plan: Plan,
    report: RunReport,
    clock: Clock,
) -> str | None:
    """The send loop; returns why it stopped early (the transport is down), or None."""
    consecutive_failures = 0
    stopped: str | None = None
    last_beat = clock()
    with transport.session() as sender:
        for index, batch in enumerate(_chunks(plan.to_send, HEARTBEAT_EVERY)):
            if index or clock() - last_beat > LEASE_DURATION / 2:
                last_beat = clock()
                heartbeat(app_db, run, last_beat)
            paid: set[str] = set()
            if run.action_id == RECOVER_ABANDONED and stopped is None:
                paid = _paid_since_checkout(app_db, run, batch, clock())
            for recipient in batch:
                if stopped is not None:
                    plan.skipped[SKIP_TRANSPORT_DOWN] += 1
                    continue
                if recipient.email in paid:
                    plan.skipped[SKIP_PAID] += 1
                    continue
                outcome = _send_one(app_db, sender, settings, run, recipient.email, clock)
                if outcome == SENT:
                    report.sent_now += 1
                    consecutive_failures = 0
                elif outcome.startswith(FAIL_DELIVERY):
                    consecutive_failures += 1
                    if consecutive_failures >= MAX_CONSECUTIVE_DELIVERY_FAILURES:
                        stopped = (
                            f"stopped after {consecutive_failures} consecutive delivery"
                            f" failures ({outcome})"
                        )
                elif outcome != FAILED:
                    plan.skipped[outcome] += 1
    return stopped


def _send_one(
    app_db: AppDatabase,
    sender: EmailSender,
    settings: Settings,
    run: StartedRun,
    email: str,
    clock: Clock,
) -> str:
    """Claim, send and mark one recipient: SENT, a `delivery: …` error, FAILED (bad message),
    a skip reason, or the status of an earlier claim of the same key."""
    outcome = claim(app_db, run, email, clock())
    if outcome != CLAIMED:
        return outcome
    try:
        message = compose(run, email, settings, clock())
    except (RenderError, ValueError) as error:
        mark_failed(app_db, run, email, failure(FAIL_BAD_MESSAGE, str(error)))
        return FAILED
    try:
        sender.send(message)
    except EmailDeliveryError as error:
        text = failure(FAIL_DELIVERY, str(error))
        mark_failed(app_db, run, email, text)
        return text
    except BaseException as error:
        # Not a delivery verdict (a bug, a signal): whether the mail left is unknown.
        mark_failed(app_db, run, email, failure(FAIL_INTERRUPTED, repr(error)))
        raise
    mark_sent(app_db, run, email, clock())
    return SENT


def _result(app_db: AppDatabase, run: StartedRun, plan: Plan) -> dict[str, Any]:
    """`workflow_runs.result`: counts by outcome over every attempt, skips of this attempt."""
    rows = app_db.fetch_all(
        "select status, error from workflow_sends where run_id = :run_id", {"run_id": run.run_id}
    )
    statuses = Counter(str(row.status) for row in rows)
    failures = Counter(failure_reason(row.error) for row in rows if row.status == FAILED)
    skipped = {reason: count for reason, count in sorted(plan.skipped.items()) if count}
    return {
        "action": run.label,
        "locale": run.locale,
        "attempt": run.attempt,
        "as_of": iso(plan.as_of),
        "recipients": plan.recipients,
        "sent": statuses[SENT],
        "failed": statuses[FAILED],
        "skipped": skipped,
        "failure_reasons": dict(sorted(failures.items())),
    }


def _final_status(result: Mapping[str, Any], stopped: str | None) -> tuple[str, str | None]:
    """A run fails when the transport stopped it or when nothing was sent but something failed:
    a failed run does not hold back the next run, which retries the failed recipients."""
    if stopped is not None:
        return FAILED, f"{stopped}; {result['sent']} sent, {result['failed']} failed"
    if result["sent"] == 0 and result["failed"] > 0:
        return FAILED, f"all {result['failed']} sends failed: {result['failure_reasons']}"
    return SUCCEEDED, None


# --- reaper and retention -------------------------------------------------------------------


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
            attempts = _int(row.attempts)
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
        _end_interrupted_claims(connection, [*requeued, *failed], "lease expired")
    return ReapReport(requeued=requeued, failed=failed)


def prune_sends(app_db: AppDatabase, now: datetime) -> int:
    """Delete `workflow_sends` rows created more than SEND_RETENTION ago; returns how many."""
    with app_db.begin() as connection:
        deleted = connection.execute(
            sa.text("delete from workflow_sends where created_at < :cutoff and status <> :claimed"),
            {"cutoff": db_time(app_db, now - SEND_RETENTION), "claimed": CLAIMED},
        )
    return int(deleted.rowcount)
