"""Workflow send policy (CONTRACT §7): every window, cooldown, cap and reason in one place.

Nothing here touches a database or the clock; callers pass `now`.
"""

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from runhub_pipeline.sends.message import AddressError, HeaderInjectionError, parse_address

# Actions a workflow run may carry. The UI's "post update" is `send_promo` with params.isUpdate.
RECOVER_ABANDONED = "recover_abandoned"
SEND_PROMO = "send_promo"
ONBOARD_USERS = "onboard_users"
POST_UPDATE = "post_update"
ACTIONS = (RECOVER_ABANDONED, SEND_PROMO, ONBOARD_USERS)
DAILY_DIGEST = "daily_digest"

# Run statuses (queued -> running -> succeeded | failed) and send statuses.
QUEUED, RUNNING, SUCCEEDED, FAILED = "queued", "running", "succeeded", "failed"
CLAIMED, SENT = "claimed", "sent"

# No new run of an action while another run of it, created this recently, is not failed.
RUN_COOLDOWNS: Mapping[str, timedelta] = {
    RECOVER_ABANDONED: timedelta(minutes=60),
    SEND_PROMO: timedelta(minutes=120),
    ONBOARD_USERS: timedelta(minutes=60),
}
RECIPIENT_CAP = 1_000
RECIPIENT_COOLDOWN = timedelta(hours=24)

# Audiences, relative to the wall clock at send time.
ABANDONED_AFTER = timedelta(minutes=30)
RECOVERY_WINDOW = timedelta(hours=24)
PROMO_LOOKBACK = timedelta(days=90)
ONBOARDING_LOOKBACK = timedelta(days=7)

# Run lifecycle.
LEASE_DURATION = timedelta(minutes=5)
HEARTBEAT_EVERY = 50
MAX_ATTEMPTS = 3
# An unreachable server fails every send the same way: stop after this many in a row.
MAX_CONSECUTIVE_DELIVERY_FAILURES = 5
SEND_RETENTION = timedelta(days=90)
# Auto-recovery runs are keyed by the 15-minute slot of the tick that created them.
AUTO_RUN_SLOT = timedelta(minutes=15)

# Digest: abandoned checkouts still recoverable (CONTRACT §5 `abandoned_open`).
OPEN_ABANDONED_WINDOW = timedelta(hours=48)
DEFAULT_DIGEST_HOUR = 8
# A digest whose delivery failed is tried again at the next hourly tick, the same row and day, at
# most DIGEST_MAX_ATTEMPTS times in all: that rides out a relay restart or a short outage (up to
# two hours) while the digest still arrives the morning it is meant for, and a dead server costs
# each project three connection attempts a day rather than one an hour. After the last attempt
# the project waits for its next regular digest hour.
DIGEST_RETRY_DELAY = timedelta(hours=1)
DIGEST_MAX_ATTEMPTS = 3

OUTCOME_EVENTS: Mapping[str, str] = {
    RECOVER_ABANDONED: "recovery_email_sent",
    SEND_PROMO: "promo_email_sent",
    ONBOARD_USERS: "onboarding_email_sent",
}

# Why a recipient was not sent to; counted by reason in workflow_runs.result.
SKIP_INVALID_ADDRESS = "invalid_address"
SKIP_OUTSIDE_PROJECT = "outside_project"
SKIP_SUPPRESSED = "suppressed"
SKIP_RECENTLY_EMAILED = "recently_emailed"
SKIP_PAID = "paid"
SKIP_CAPPED = "capped"
SKIP_TRANSPORT_DOWN = "transport_down"
SKIP_REASONS = (
    SKIP_INVALID_ADDRESS,
    SKIP_OUTSIDE_PROJECT,
    SKIP_SUPPRESSED,
    SKIP_RECENTLY_EMAILED,
    SKIP_PAID,
    SKIP_CAPPED,
    SKIP_TRANSPORT_DOWN,
)

# Why a claimed send failed: the prefix of workflow_sends.error ("delivery: connection refused").
FAIL_DELIVERY = "delivery"
FAIL_INTERRUPTED = "interrupted"
FAIL_BAD_MESSAGE = "bad_message"

# The run params that carry a promo's or update's wording into its template.
CONTENT_PARAMS = ("title", "body", "cta_url", "cta_label")

_CONTRACT_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[a-z]{2,}$")


class InvalidRunError(ValueError):
    """A workflow run the pipeline cannot execute; the message is stored on the run row."""


@dataclass(frozen=True)
class RunParams:
    """The validated `workflow_runs.params` of a run."""

    locale: str | None = None
    is_update: bool = False
    # Addresses the app chose (promo, update, onboarding); mailed only if in the project's events.
    emails: tuple[str, ...] | None = None
    # Optional wording of a promo or update: title, body, cta_url, cta_label.
    content: Mapping[str, str] = field(default_factory=dict)


def normalize_email(value: object) -> str | None:
    """`lower(trim(value))` when it matches the contract's address pattern (CONTRACT §4)."""
    if not isinstance(value, str):
        return None
    email = value.strip().lower()
    return email if _CONTRACT_EMAIL.match(email) else None


def address_problem(email: str) -> str | None:
    """Why a normalized address cannot be mailed (the message layer refuses it), or None."""
    if _CONTRACT_EMAIL.match(email) is None:
        return "not an e-mail address"
    try:
        parse_address(email)
    except (AddressError, HeaderInjectionError) as error:
        return str(error)
    return None


def parse_params(action_id: object, raw: object) -> RunParams:
    """Validate a run's action and params; raises InvalidRunError with a message for the run row."""
    if action_id not in ACTIONS:
        raise InvalidRunError(
            f"unknown action {action_id!r}: expected one of {', '.join(ACTIONS)}"
            f" ({POST_UPDATE} is {SEND_PROMO} with params.isUpdate)"
        )
    params = _json_object(raw)
    locale = params.get("locale")
    if locale is not None and not isinstance(locale, str):
        raise InvalidRunError(f"malformed params: locale must be a string, got {locale!r}")
    is_update = params.get("isUpdate", False)
    if not isinstance(is_update, bool):
        raise InvalidRunError(
            f"malformed params: isUpdate must be true or false, got {is_update!r}"
        )
    if is_update and action_id != SEND_PROMO:
        raise InvalidRunError(f"malformed params: isUpdate is only valid for {SEND_PROMO}")
    emails = params.get("emails")
    if emails is not None and (
        not isinstance(emails, list) or not all(isinstance(e, str) for e in emails)
    ):
        raise InvalidRunError("malformed params: emails must be a list of strings")
    if emails is not None and action_id == RECOVER_ABANDONED:
        raise InvalidRunError(f"malformed params: {RECOVER_ABANDONED} takes no emails list")
    content = {key: params[key] for key in CONTENT_PARAMS if params.get(key) is not None}
    wrong = sorted(key for key, value in content.items() if not isinstance(value, str))
    if wrong:
        raise InvalidRunError(f"malformed params: {', '.join(wrong)} must be strings")
    return RunParams(
        locale=locale,
        is_update=is_update,
        emails=tuple(emails) if emails is not None else None,
        content=content,
    )


def _json_object(raw: object) -> dict[str, Any]:
    if raw is None:
        return {}
    value = raw
    if isinstance(raw, str | bytes):
        try:
            value = json.loads(raw)
        except ValueError:
            raise InvalidRunError("malformed params: not valid JSON") from None
        if value is None:
            return {}
    if not isinstance(value, dict):
        raise InvalidRunError(
            f"malformed params: expected a JSON object, got {type(value).__name__}"
        )
    return value


def email_kind(action_id: str, params: RunParams) -> str:
    """The template kind rendered for a run's e-mails."""
    if action_id == RECOVER_ABANDONED:
        return "recovery"
    if action_id == ONBOARD_USERS:
        return "onboarding"
    return "update" if params.is_update else "promo"


def action_label(action_id: str, params: RunParams) -> str:
    """The action as the app's UI names it (`post_update` for an update)."""
    return POST_UPDATE if action_id == SEND_PROMO and params.is_update else action_id


def send_key(run_id: str, email: str) -> str:
    """The `workflow_sends.idempotency_key` of one recipient of one run."""
    return f"workflow:{run_id}:{email}"


def outcome_key(run_id: str, email: str) -> str:
    """The outcome business event's idempotency key, derived from the send key."""
    return f"{send_key(run_id, email)}:sent"


def digest_key(project_id: str, reported_day: str) -> str:
    """The `inhouse_emails.idempotency_key` of a project's digest of one local day."""
    return f"digest:{project_id}:{reported_day}"


def failure(reason: str, detail: str) -> str:
    """A `workflow_sends.error` value: the reason, then one line of detail."""
    first_line = (detail.strip().splitlines() or [""])[0][:500]
    return f"{reason}: {first_line}" if first_line else reason


def failure_reason(error: str | None) -> str:
    """The reason prefix of a `workflow_sends.error` value."""
    return (error or "unknown").split(":", 1)[0]
