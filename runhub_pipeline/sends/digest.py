"""The daily digest (CONTRACT §7): one e-mail per due project and reported local day.

A project is due when `digest_enabled`, it has an owner address and `digest_next_at` is NULL or
not after `now`. The reported day is yesterday in the project's time zone (UTC when the zone is
not valid: the digest then comes at its UTC hour), or the day of a pending retry (below). Its
KPIs, compared with the day before and with the same weekday a week earlier, alert counts and
open abandoned checkouts come from the warehouse snapshot, for all due projects in one query each.

Exactly once: in one transaction the project's `digest_next_at` moves on to the next local
`digest_hour` and an `inhouse_emails` row (key `digest:{project_id}:{reported_day}`) is inserted
`queued`; then the e-mail is sent and the row marked `sent` or `failed`. A second worker finds the
project no longer due, a repeat finds the key, and a crash between the two leaves a `queued` row
that a later tick ends `failed` (interrupted) instead of sending it again. Missed days are
skipped, not caught up: the next digest is always the next local digest hour after `now`.

Retries: a delivery failure ends the row `failed` with `delivery: <why> (attempt n of 3)` and,
before the last attempt (`DIGEST_MAX_ATTEMPTS`), sets `digest_next_at` one tick later
(`DIGEST_RETRY_DELAY`). That tick reports the same day, even past the project's midnight, and its
claim takes the same row back to `queued`: same key and Message-ID, never a second row, and a
`sent` row is never claimed again. The retried row's `created_at` becomes the attempt's time, so
the stale-`queued` sweep measures the attempt in flight rather than the first one. Only delivery
failures are retried: an interrupted send may have gone out, and a message that cannot be
rendered fails the same way again. A retry is pending only until the next regular digest is due,
so a worker that was down still skips days rather than catching up.

An owner address that is set but cannot be mailed is not silence: the day gets a `failed` row
`invalid_address: <why>`, once, as `digest_next_at` moves on to the next digest hour as usual.
"""

import functools
import re
import zoneinfo
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import duckdb
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.email import EmailDeliveryError, EmailSender, EmailTransport
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.sends.digest_context import ALERT_LABELS, CHART_DAYS, build_digest_context
from runhub_pipeline.sends.digest_kpis import KPI_COLUMNS
from runhub_pipeline.sends.lifecycle import advancing_clock
from runhub_pipeline.sends.locales import normalize_locale
from runhub_pipeline.sends.message import address_domain, build_message, make_message_id
from runhub_pipeline.sends.policy import (
    DAILY_DIGEST,
    DEFAULT_DIGEST_HOUR,
    DIGEST_MAX_ATTEMPTS,
    DIGEST_RETRY_DELAY,
    FAIL_BAD_MESSAGE,
    FAIL_DELIVERY,
    FAIL_INTERRUPTED,
    FAILED,
    OPEN_ABANDONED_WINDOW,
    QUEUED,
    RECOVERY_WINDOW,
    SENT,
    SKIP_INVALID_ADDRESS,
    address_problem,
    digest_key,
    failure,
    failure_reason,
    normalize_email,
)
from runhub_pipeline.sends.recipients import fetch_model
from runhub_pipeline.sends.render import RenderError, render_email
from runhub_pipeline.sends.stored import db_time, lock_key, parse_flag, parse_time
from runhub_pipeline.settings import Settings

ALERT_COLUMNS = tuple(ALERT_LABELS)
# A `queued` digest row older than this belongs to a worker that died mid-send.
STALE_QUEUED_DIGEST = timedelta(hours=1)
# The end of a delivery failure's `inhouse_emails.error`: which attempt of the day it was.
_ATTEMPT = re.compile(r"\(attempt (\d+) of \d+\)$")


@dataclass(frozen=True)
class DueProject:
    project_id: str
    name: str
    # The normalized owner address; when `owner_problem` says why it cannot be mailed, the
    # trimmed value as stored, for the failed row.
    owner_email: str
    locale: str
    currency: str
    zone: zoneinfo.ZoneInfo
    digest_hour: int
    recovery_enabled: bool
    # Yesterday in the project's zone, or the day of a delivery retry still pending.
    reported_day: date
    owner_problem: str | None = None

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        """The UTC instants where the local day starts and the next one starts."""
        return first_existing(day, 0, self.zone), first_existing(
            day + timedelta(days=1), 0, self.zone
        )


@dataclass
class DigestReport:
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
    # Projects among `failed` whose delivery is tried again DIGEST_RETRY_DELAY later.
    retrying: list[str] = field(default_factory=list)
    already_done: list[str] = field(default_factory=list)
    interrupted: int = 0


# --- time zones and the next digest time --------------------------------------------------------


@functools.cache
def _valid_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def project_zone(raw: object) -> zoneinfo.ZoneInfo:
    """The project's zone if valid (trimmed, in zoneinfo's list, CONTRACT §2), else UTC."""
    name = raw.strip() if isinstance(raw, str) else ""
    return zoneinfo.ZoneInfo(name if name in _valid_zones() else "UTC")


def digest_hour(raw: object) -> int:
    """The local digest hour; DEFAULT_DIGEST_HOUR when missing or not an hour of the day."""
    try:
        hour = int(str(raw).strip())
    except ValueError:
        return DEFAULT_DIGEST_HOUR
    return hour if 0 <= hour <= 23 else DEFAULT_DIGEST_HOUR


def first_existing(day: date, hour: int, zone: zoneinfo.ZoneInfo) -> datetime:
    """The UTC instant of `hour:00` local on `day`; inside a DST gap, the first local time after
    the gap; on a repeated hour, its first occurrence."""
    wanted = datetime.combine(day, time(hour))
    candidate = wanted.replace(tzinfo=zone).astimezone(UTC)
    if candidate.astimezone(zone).replace(tzinfo=None) == wanted:
        return candidate
    # In a gap: the transition lies between the two readings of the missing time; find the first
    # minute (every real offset is whole minutes) whose local time is past it.
    low = wanted.replace(tzinfo=zone, fold=1).astimezone(UTC)
    high = wanted.replace(tzinfo=zone, fold=0).astimezone(UTC)
    low, high = min(low, high), max(low, high)
    while high - low > timedelta(minutes=1):
        middle = low + (high - low) / 2
        middle = middle.replace(second=0, microsecond=0)
        if middle.astimezone(zone).replace(tzinfo=None) > wanted:
            high = middle
        else:
            low = middle
    return high


def next_digest_at(now: datetime, zone: zoneinfo.ZoneInfo, hour: int) -> datetime:
    """The next existing local `hour:00` strictly after `now`, as a UTC instant."""
    today = now.astimezone(zone).date()
    for offset in range(3):
        candidate = first_existing(today + timedelta(days=offset), hour, zone)
        if candidate > now:
            return candidate
    raise AssertionError("a local hour exists within three days")  # pragma: no cover


# --- which projects are due ---------------------------------------------------------------------

_PROJECTS = sa.text(
    "select project_id, name, timezone, currency, locale, owner_email, digest_enabled,"
    " digest_hour, digest_next_at, auto_recover_abandoned"
    " from projects where owner_email is not null"
)


def _is_due(row: Any, now: datetime) -> bool:
    next_at = parse_time(row.digest_next_at)
    return parse_flag(row.digest_enabled) and (next_at is None or next_at <= now)


def _owner_text(row: Any) -> str:
    """The owner address as stored, trimmed; blank means the project has none."""
    return str(row.owner_email).strip() if row.owner_email is not None else ""


def due_count(app_db: AppDatabase, now: datetime) -> int:
    """How many projects are due, an invalid owner address included (it gets its failed row):
    the schedule's test."""
    with app_db.begin() as connection:
        rows = connection.execute(_PROJECTS).all()
    return sum(1 for row in rows if _is_due(row, now) and _owner_text(row))


def due_projects(app_db: AppDatabase, now: datetime) -> list[DueProject]:
    """Projects whose digest is due at `now`, each with the day it reports (two queries; values
    the app may have garbled are read leniently: an owner address that cannot be mailed is
    carried as `owner_problem`)."""
    due = []
    with app_db.begin() as connection:
        rows = connection.execute(_PROJECTS).all()
        for row in rows:
            if not _is_due(row, now) or not _owner_text(row):
                continue
            owner = normalize_email(row.owner_email)
            problem = "not an e-mail address" if owner is None else address_problem(owner)
            zone = project_zone(row.timezone)
            due.append(
                DueProject(
                    project_id=row.project_id,
                    name=str(row.name or "").strip() or row.project_id,
                    owner_email=_owner_text(row) if owner is None or problem else owner,
                    locale=normalize_locale(row.locale if isinstance(row.locale, str) else None),
                    currency=str(row.currency or "").strip().upper() or "USD",
                    zone=zone,
                    digest_hour=digest_hour(row.digest_hour),
                    recovery_enabled=parse_flag(row.auto_recover_abandoned),
                    reported_day=now.astimezone(zone).date() - timedelta(days=1),
                    owner_problem=problem,
                )
            )
        retries = _pending_retries(connection, due, now)
    due = [replace(p, reported_day=retries.get(p.project_id, p.reported_day)) for p in due]
    return sorted(due, key=lambda project: project.project_id)


def _pending_retries(
    connection: Connection, projects: Sequence[DueProject], now: datetime
) -> dict[str, date]:
    """The reported day of each project whose digest of the day before yesterday (local) awaits
    a delivery retry: a digest sent late in the evening is retried after midnight, and still
    reports its own day. Such a retry is pending until the next regular digest is due (today's
    digest hour); yesterday's own retries need no lookup, yesterday being the usual day."""
    candidates: dict[str, tuple[str, date]] = {}
    for project in projects:
        today = now.astimezone(project.zone).date()
        if project.owner_problem is None and now < first_existing(
            today, project.digest_hour, project.zone
        ):
            day = today - timedelta(days=2)
            candidates[digest_key(project.project_id, day.isoformat())] = (project.project_id, day)
    if not candidates:
        return {}
    rows = connection.execute(
        sa.text(
            "select idempotency_key, status, error from inhouse_emails"
            " where idempotency_key in :keys"
        ).bindparams(sa.bindparam("keys", expanding=True)),
        {"keys": list(candidates)},
    )
    return dict(
        candidates[row.idempotency_key]
        for row in rows
        if _next_attempt(row.status, row.error) is not None
    )


def _next_attempt(status: object, error: object) -> int | None:
    """The attempt a retry of this digest row would be, or None when it is not retried (sent,
    queued, failed for another reason than delivery, or out of attempts)."""
    if status != FAILED or not isinstance(error, str) or failure_reason(error) != FAIL_DELIVERY:
        return None
    found = _ATTEMPT.search(error)
    done = int(found.group(1)) if found else 1
    return done + 1 if done < DIGEST_MAX_ATTEMPTS else None


# --- what the digests say ------------------------------------------------------------------------


@dataclass(frozen=True)
class DigestData:
    daily_kpis: Mapping[date, Mapping[str, Any]]
    alerts: Mapping[str, int]
    abandoned_open: int
    abandoned_recent: int


def digest_data(
    connection: duckdb.DuckDBPyConnection, projects: Sequence[DueProject], now: datetime
) -> dict[str, DigestData]:
    """Every due project's digest numbers, one warehouse query per kind (set-based)."""
    if not projects:
        return {}
    ids = [project.project_id for project in projects]
    days = [project.reported_day for project in projects]
    bounds = [project.day_bounds(day) for project, day in zip(projects, days, strict=True)]
    kpis: dict[str, dict[date, dict[str, Any]]] = {pid: {} for pid in ids}
    rows = fetch_model(
        connection,
        "digest_kpis",
        {
            "project_ids": ids,
            "first_days": [day - timedelta(days=CHART_DAYS - 1) for day in days],
            "reported_days": days,
        },
        columns=KPI_COLUMNS,
    )
    for row in rows:
        kpis[row[0]][row[1]] = dict(zip(KPI_COLUMNS, row[2:], strict=True))
    alerts = {
        row[0]: dict(zip(ALERT_COLUMNS, (int(value) for value in row[1:]), strict=True))
        for row in fetch_model(
            connection,
            "digest_alerts",
            {
                "project_ids": ids,
                "day_starts": [start for start, _ in bounds],
                "day_ends": [end for _, end in bounds],
            },
        )
    }
    abandoned = {
        row[0]: (int(row[1]), int(row[2]))
        for row in fetch_model(
            connection,
            "digest_open_abandoned",
            {
                "project_ids": ids,
                "open_since": now - OPEN_ABANDONED_WINDOW,
                "recent_since": now - RECOVERY_WINDOW,
                "now": now,
            },
        )
    }
    return {
        pid: DigestData(
            daily_kpis=kpis[pid],
            alerts=alerts.get(pid, dict.fromkeys(ALERT_COLUMNS, 0)),
            abandoned_open=abandoned.get(pid, (0, 0))[0],
            abandoned_recent=abandoned.get(pid, (0, 0))[1],
        )
        for pid in ids
    }


# --- sending -----------------------------------------------------------------------------------


def _claim_digest(
    app_db: AppDatabase,
    project: DueProject,
    key: str,
    subject: str,
    now: datetime,
    error: str | None,
) -> int | None:
    """Move the project's next digest time on and insert its `queued` row, or take the key's
    row awaiting a delivery retry back to `queued`; the attempt to send, or None when nothing is
    to be sent: another worker or an earlier tick already did it, or `error` (the message cannot
    be built) was recorded on the row as `failed` instead."""
    with app_db.begin() as connection:
        lock_key(app_db, connection, f"digest:{project.project_id}")
        row = connection.execute(
            sa.text("select digest_enabled, digest_next_at from projects where project_id = :pid"),
            {"pid": project.project_id},
        ).first()
        if row is None or not _is_due(row, now):
            return None
        connection.execute(
            sa.text("update projects set digest_next_at = :next where project_id = :pid"),
            {
                "next": db_time(app_db, next_digest_at(now, project.zone, project.digest_hour)),
                "pid": project.project_id,
            },
        )
        existing = connection.execute(
            sa.text("select status, error from inhouse_emails where idempotency_key = :key"),
            {"key": key},
        ).first()
        values = {
            "pid": project.project_id,
            "template": DAILY_DIGEST,
            "locale": project.locale,
            "to_email": project.owner_email,
            "subject": subject,
            "status": QUEUED if error is None else FAILED,
            "key": key,
            "now": db_time(app_db, now),
            "error": error,
        }
        if existing is None:
            attempt = 1
            connection.execute(
                sa.text(
                    "insert into inhouse_emails (project_id, template_name, locale, to_email,"
                    " subject, status, idempotency_key, created_at, error)"
                    " values (:pid, :template, :locale, :to_email, :subject, :status, :key,"
                    " :now, :error)"
                ),
                values,
            )
        else:
            next_attempt = _next_attempt(existing.status, existing.error)
            if next_attempt is None:
                return None
            attempt = next_attempt
            connection.execute(
                sa.text(
                    "update inhouse_emails set status = :status, error = :error,"
                    " locale = :locale, to_email = :to_email, subject = :subject,"
                    " created_at = :now"
                    " where idempotency_key = :key and status = :failed"
                ),
                {**values, "failed": FAILED},
            )
    return attempt if error is None else None


def _mark_digest(
    app_db: AppDatabase,
    key: str,
    status: str,
    error: str | None,
    now: datetime,
    retry: tuple[str, datetime] | None = None,
) -> None:
    """End the key's `queued` row `sent` or `failed`; with `retry` (project, time), in the same
    transaction, move that project's next digest time to the retry."""
    with app_db.begin() as connection:
        marked = connection.execute(
            sa.text(
                "update inhouse_emails set status = :status, error = :error,"
                " sent_at = case when :is_sent then :now else sent_at end"
                " where idempotency_key = :key and status = :queued"
            ),
            {
                "status": status,
                "error": error,
                "is_sent": status == SENT,
                "now": db_time(app_db, now),
                "key": key,
                "queued": QUEUED,
            },
        )
        if retry is not None and marked.rowcount == 1:
            project_id, retry_at = retry
            connection.execute(
                sa.text("update projects set digest_next_at = :next where project_id = :pid"),
                {"next": db_time(app_db, retry_at), "pid": project_id},
            )


def end_interrupted_digests(app_db: AppDatabase, now: datetime) -> int:
    """End `queued` digest rows a dead worker left behind as `failed` (interrupted)."""
    cutoff = now - STALE_QUEUED_DIGEST
    with app_db.begin() as connection:
        rows = connection.execute(
            sa.text(
                "select idempotency_key, created_at from inhouse_emails"
                " where template_name = :template and status = :queued"
                " and created_at < :cutoff"
            ),
            {"template": DAILY_DIGEST, "queued": QUEUED, "cutoff": db_time(app_db, cutoff)},
        ).all()
        stale = [row.idempotency_key for row in rows]
        for key in stale:
            connection.execute(
                sa.text(
                    "update inhouse_emails set status = :failed, error = :error"
                    " where idempotency_key = :key and status = :queued"
                ),
                {
                    "failed": FAILED,
                    "queued": QUEUED,
                    "key": key,
                    "error": failure(FAIL_INTERRUPTED, "the sender stopped before marking it"),
                },
            )
    return len(stale)


def compose_digest(
    project: DueProject, data: DigestData, settings: Settings, now: datetime
) -> tuple[str, Any]:
    """(subject, message) of one project's digest; a service message without unsubscribe."""
    day = project.reported_day
    context = build_digest_context(
        project.locale,
        project_name=project.name,
        reported_day=day,
        currency=project.currency,
        daily_kpis=data.daily_kpis,
        alert_counts=data.alerts,
        abandoned_open=data.abandoned_open,
        abandoned_24h=data.abandoned_recent,
        recovery_enabled=project.recovery_enabled,
    )
    rendered = render_email(DAILY_DIGEST, project.locale, context)
    key = digest_key(project.project_id, day.isoformat())
    message = build_message(
        from_addr=settings.mail_from,
        to_addr=project.owner_email,
        subject=rendered.subject,
        rendered=rendered,
        message_id=make_message_id(key, address_domain(settings.mail_from)),
        marketing=False,
        unsubscribe_url=None,
        date=now,
    )
    return rendered.subject, message


def send_due_digests(
    app_db: AppDatabase,
    warehouse: Warehouse,
    transport: EmailTransport,
    settings: Settings,
    now: datetime,
) -> DigestReport:
    """Send every digest due at wall-clock `now` (see the module docstring)."""
    report = DigestReport()
    report.interrupted = end_interrupted_digests(app_db, now)
    projects = due_projects(app_db, now)
    if not projects:
        return report
    mailable = [project for project in projects if project.owner_problem is None]
    data: dict[str, DigestData] = {}
    if mailable:
        with warehouse.reader() as connection:
            data = digest_data(connection, mailable, now)
    clock = advancing_clock(now)
    with transport.session() as sender:
        for project in projects:
            if project.owner_problem is not None:
                _record_unmailable_owner(app_db, project, clock(), report)
                continue
            _send_digest(
                app_db, sender, settings, project, data[project.project_id], now, clock(), report
            )
    return report


def _record_unmailable_owner(
    app_db: AppDatabase, project: DueProject, now: datetime, report: DigestReport
) -> None:
    """The day's row `failed: invalid_address` (the reason workflow sends count such addresses
    under); the claim moves `digest_next_at` on, so it is recorded once a day, not every tick."""
    key = digest_key(project.project_id, project.reported_day.isoformat())
    error = failure(SKIP_INVALID_ADDRESS, project.owner_problem or "")
    _claim_digest(app_db, project, key, "", now, error)
    report.failed.append(project.project_id)


def _send_digest(
    app_db: AppDatabase,
    sender: EmailSender,
    settings: Settings,
    project: DueProject,
    data: DigestData,
    now: datetime,
    send_time: datetime,
    report: DigestReport,
) -> None:
    """Claim, send and mark one digest: `now` is the tick (a retry is due a tick later),
    `send_time` when this digest is claimed and marked."""
    key = digest_key(project.project_id, project.reported_day.isoformat())
    try:
        subject, message = compose_digest(project, data, settings, now)
        error = None
    except (RenderError, ValueError) as problem:
        subject, message, error = "", None, failure(FAIL_BAD_MESSAGE, str(problem))
    attempt = _claim_digest(app_db, project, key, subject, send_time, error)
    if attempt is None:
        (report.failed if error else report.already_done).append(project.project_id)
        return
    try:
        sender.send(message)
    except EmailDeliveryError as problem:
        detail = failure(FAIL_DELIVERY, str(problem))
        retry = None
        if attempt < DIGEST_MAX_ATTEMPTS:
            retry = (project.project_id, now + DIGEST_RETRY_DELAY)
            report.retrying.append(project.project_id)
        reason = f"{detail} (attempt {attempt} of {DIGEST_MAX_ATTEMPTS})"
        _mark_digest(app_db, key, FAILED, reason, send_time, retry)
        report.failed.append(project.project_id)
        return
    except BaseException as problem:
        _mark_digest(app_db, key, FAILED, failure(FAIL_INTERRUPTED, repr(problem)), send_time)
        raise
    _mark_digest(app_db, key, SENT, None, send_time)
    report.sent[(DAILY_DIGEST, project.locale)] += 1
