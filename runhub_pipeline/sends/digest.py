"""The daily digest (CONTRACT §7): one e-mail per due project and reported local day.

A project is due when `digest_enabled`, it has an owner address and `digest_next_at` is NULL or
not after `now`. The reported day is yesterday in the project's time zone (UTC when the zone is
not valid: the digest then comes at its UTC hour). Its KPIs, compared with the day before and
with the same weekday a week earlier, alert counts and open abandoned checkouts come from the
warehouse snapshot, for all due projects in one query each.

Exactly once: in one transaction the project's `digest_next_at` moves on to the next local
`digest_hour` and an `inhouse_emails` row (key `digest:{project_id}:{reported_day}`) is inserted
`queued`; then the e-mail is sent and the row marked `sent` or `failed`. A second worker finds the
project no longer due, a repeat finds the key, and a crash between the two leaves a `queued` row
that a later tick ends `failed` (interrupted) instead of sending it again. Missed days are
skipped, not caught up: the next digest is always the next local digest hour after `now`.
"""

import functools
import zoneinfo
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import duckdb
import sqlalchemy as sa

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
    FAIL_BAD_MESSAGE,
    FAIL_DELIVERY,
    FAIL_INTERRUPTED,
    FAILED,
    OPEN_ABANDONED_WINDOW,
    QUEUED,
    RECOVERY_WINDOW,
    SENT,
    address_problem,
    digest_key,
    failure,
    normalize_email,
)
from runhub_pipeline.sends.recipients import fetch_model
from runhub_pipeline.sends.render import RenderError, render_email
from runhub_pipeline.sends.stored import db_time, lock_key, parse_flag, parse_time
from runhub_pipeline.settings import Settings

ALERT_COLUMNS = tuple(ALERT_LABELS)
# A `queued` digest row older than this belongs to a worker that died mid-send.
STALE_QUEUED_DIGEST = timedelta(hours=1)


@dataclass(frozen=True)
class DueProject:
    project_id: str
    name: str
    owner_email: str
    locale: str
    currency: str
    zone: zoneinfo.ZoneInfo
    digest_hour: int
    recovery_enabled: bool

    def reported_day(self, now: datetime) -> date:
        return now.astimezone(self.zone).date() - timedelta(days=1)

    def day_bounds(self, day: date) -> tuple[datetime, datetime]:
        """The UTC instants where the local day starts and the next one starts."""
        return first_existing(day, 0, self.zone), first_existing(
            day + timedelta(days=1), 0, self.zone
        )


@dataclass
class DigestReport:
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    failed: list[str] = field(default_factory=list)
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


def due_count(app_db: AppDatabase, now: datetime) -> int:
    """How many projects look due (without the full address check): the schedule's test."""
    with app_db.begin() as connection:
        rows = connection.execute(_PROJECTS).all()
    return sum(1 for row in rows if _is_due(row, now) and normalize_email(row.owner_email))


def due_projects(app_db: AppDatabase, now: datetime) -> list[DueProject]:
    """Projects whose digest is due at `now` (one query; values the app may have garbled are
    read leniently: an invalid owner address means no digest)."""
    due = []
    with app_db.begin() as connection:
        rows = connection.execute(_PROJECTS).all()
    for row in rows:
        if not _is_due(row, now):
            continue
        owner = normalize_email(row.owner_email)
        if owner is None or address_problem(owner) is not None:
            continue
        currency = str(row.currency or "").strip().upper() or "USD"
        due.append(
            DueProject(
                project_id=row.project_id,
                name=str(row.name or "").strip() or row.project_id,
                owner_email=owner,
                locale=normalize_locale(row.locale if isinstance(row.locale, str) else None),
                currency=currency,
                zone=project_zone(row.timezone),
                digest_hour=digest_hour(row.digest_hour),
                recovery_enabled=parse_flag(row.auto_recover_abandoned),
            )
        )
    return sorted(due, key=lambda project: project.project_id)


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
    days = [project.reported_day(now) for project in projects]
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
) -> bool:
    """Move the project's next digest time on and insert its `queued` row (or, when rendering
    failed, its `failed` row); False when another worker or an earlier tick already did."""
    with app_db.begin() as connection:
        lock_key(app_db, connection, f"digest:{project.project_id}")
        row = connection.execute(
            sa.text("select digest_enabled, digest_next_at from projects where project_id = :pid"),
            {"pid": project.project_id},
        ).first()
        if row is None or not _is_due(row, now):
            return False
        connection.execute(
            sa.text("update projects set digest_next_at = :next where project_id = :pid"),
            {
                "next": db_time(app_db, next_digest_at(now, project.zone, project.digest_hour)),
                "pid": project.project_id,
            },
        )
        existing = connection.execute(
            sa.text("select 1 from inhouse_emails where idempotency_key = :key"), {"key": key}
        ).first()
        if existing is not None:
            return False
        connection.execute(
            sa.text(
                "insert into inhouse_emails (project_id, template_name, locale, to_email,"
                " subject, status, idempotency_key, created_at, error)"
                " values (:pid, :template, :locale, :to_email, :subject, :status, :key, :now,"
                " :error)"
            ),
            {
                "pid": project.project_id,
                "template": DAILY_DIGEST,
                "locale": project.locale,
                "to_email": project.owner_email,
                "subject": subject,
                "status": QUEUED if error is None else FAILED,
                "key": key,
                "now": db_time(app_db, now),
                "error": error,
            },
        )
    return error is None


def _mark_digest(
    app_db: AppDatabase, key: str, status: str, error: str | None, now: datetime
) -> None:
    with app_db.begin() as connection:
        connection.execute(
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
    day = project.reported_day(now)
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
    with warehouse.reader() as connection:
        data = digest_data(connection, projects, now)
    clock = advancing_clock(now)
    with transport.session() as sender:
        for project in projects:
            _send_digest(
                app_db, sender, settings, project, data[project.project_id], now, clock(), report
            )
    return report


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
    key = digest_key(project.project_id, project.reported_day(now).isoformat())
    try:
        subject, message = compose_digest(project, data, settings, now)
        error = None
    except (RenderError, ValueError) as problem:
        subject, message, error = "", None, failure(FAIL_BAD_MESSAGE, str(problem))
    if not _claim_digest(app_db, project, key, subject, send_time, error):
        (report.failed if error else report.already_done).append(project.project_id)
        return
    try:
        sender.send(message)
    except EmailDeliveryError as problem:
        _mark_digest(app_db, key, FAILED, failure(FAIL_DELIVERY, str(problem)), send_time)
        report.failed.append(project.project_id)
        return
    except BaseException as problem:
        _mark_digest(app_db, key, FAILED, failure(FAIL_INTERRUPTED, repr(problem)), send_time)
        raise
    _mark_digest(app_db, key, SENT, None, send_time)
    report.sent[(DAILY_DIGEST, project.locale)] += 1
