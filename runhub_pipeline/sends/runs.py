"""Workflow runs (CONTRACT §7): plan a run's recipients and send to each exactly once.

A run moves `queued -> running -> succeeded | failed`. Whoever starts it takes a lease
(`lease_owner`, `lease_expires_at`, see `sends.lifecycle`) and extends it every HEARTBEAT_EVERY
recipients; the reaper (`sends.reaper`) re-queues a run whose lease expired and fails it after
MAX_ATTEMPTS.

Exactly once: each recipient is claimed in `workflow_sends` (key `workflow:{run_id}:{email}`,
unique) in its own transaction before the e-mail is handed to the transport, and marked `sent`
together with its outcome business event right after (`sends.claims`). A crash between the two
leaves the claim `claimed`; the next attempt of the run (or the reaper) ends it `failed` with
reason `interrupted`, and it is never sent again: the transport may or may not have delivered it,
and a second copy is worse than none.
"""

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from typing import Any

import sqlalchemy as sa

from runhub_pipeline.resources.app_db import AppDatabase
from runhub_pipeline.resources.email import EmailDeliveryError, EmailSender, EmailTransport
from runhub_pipeline.resources.warehouse import Warehouse
from runhub_pipeline.sends.claims import (
    claim,
    mark_failed,
    mark_sent,
    paid_since_checkout,
    recently_emailed_among,
    suppressed_among,
)
from runhub_pipeline.sends.lifecycle import (
    Clock,
    LeaseLostError,
    NotStarted,
    StartedRun,
    advancing_clock,
    default_owner,
    finish_run,
    heartbeat,
    start_run,
)
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
    MAX_CONSECUTIVE_DELIVERY_FAILURES,
    RECIPIENT_CAP,
    RECOVER_ABANDONED,
    RUNNING,
    SENT,
    SKIP_CAPPED,
    SKIP_INVALID_ADDRESS,
    SKIP_PAID,
    SKIP_RECENTLY_EMAILED,
    SKIP_SUPPRESSED,
    SKIP_TRANSPORT_DOWN,
    SUCCEEDED,
    address_problem,
    email_kind,
    failure,
    failure_reason,
    send_key,
)
from runhub_pipeline.sends.recipients import Recipient, audience, named_audience
from runhub_pipeline.sends.render import RenderError, render_email
from runhub_pipeline.sends.stored import iso
from runhub_pipeline.settings import Settings
from runhub_pipeline.watermark import current_watermark


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
            suppressed |= suppressed_among(connection, run.project_id, chunk)
            recent |= recently_emailed_among(app_db, connection, run, chunk, now)
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
                paid = paid_since_checkout(app_db, run, batch, clock())
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
