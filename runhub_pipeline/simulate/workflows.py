"""Workflow runs (recoveries, promos, onboardings) and the outcome e-mail events they sent."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from runhub_pipeline.sends.policy import (
    SKIP_CAPPED,
    SKIP_PAID,
    SKIP_RECENTLY_EMAILED,
    SKIP_SUPPRESSED,
)
from runhub_pipeline.simulate.clock import DAY, HOUR, MINUTE, US, iso
from runhub_pipeline.simulate.parts import ONBOARD, OUTCOMES, PROMO, RECOVERY, Parts
from runhub_pipeline.simulate.projects import Profile
from runhub_pipeline.simulate.spec import Bools, Int64s


@dataclass
class Run:
    run_id: str
    action_id: str
    status: str
    created_us: int
    started_us: int | None
    completed_us: int | None
    lease_owner: str | None
    lease_expires_us: int | None
    attempts: int
    is_update: bool
    error: str | None
    sent: int = 0
    skipped_paid: int = 0


def draw_runs(rng: np.random.Generator, profile: Profile, start_us: int, end_us: int) -> list[Run]:
    """A few runs per project: recoveries every 6-18 h when enabled, some promos, onboardings,
    a failed one now and then, queued and running ones at the end, sometimes a stuck one."""
    first = max(start_us, profile.created_us)
    days = (end_us - first) / DAY
    planned: list[tuple[int, str, bool]] = []
    if profile.auto_recover:
        times = first + np.cumsum(rng.integers(6 * HOUR, 18 * HOUR, int(days * 4) + 1))
        planned += [(int(t), "recover_abandoned", False) for t in times[times < end_us]]
    for action, per_day in (("send_promo", 1 / 6), ("onboard_users", 1 / 3)):
        times = rng.integers(first, end_us, int(rng.poisson(days * per_day)))
        planned += [(int(t), action, False) for t in times]
    if rng.random() < 0.3:
        planned.append((end_us - int(rng.integers(2 * HOUR, 6 * HOUR)), "onboard_users", True))
    planned.sort()
    runs = []
    for at, action, stuck in planned:
        started = at + int(rng.integers(US, MINUTE))
        completed = started + int(rng.integers(2 * US, 5 * MINUTE))
        run = Run(
            run_id=str(uuid.UUID(bytes=rng.bytes(16), version=4)),
            action_id=action,
            status="succeeded",
            created_us=at,
            started_us=started,
            completed_us=completed,
            lease_owner=f"runhub-worker-{int(rng.integers(1, 4))}",
            lease_expires_us=started + 5 * MINUTE,
            attempts=1,
            is_update=action == "send_promo" and bool(rng.random() < 0.3),
            error=None,
        )
        failed = bool(rng.random() < 0.12)
        if stuck:
            run.status, run.completed_us = "running", None  # its lease expired hours ago
        elif at >= end_us - 10 * MINUTE:
            run.status, run.started_us, run.completed_us = "queued", None, None
            run.lease_owner, run.lease_expires_us, run.attempts = None, None, 0
        elif at >= end_us - HOUR or completed >= end_us:
            run.status, run.completed_us = "running", None
            run.lease_expires_us = end_us + 5 * MINUTE
        elif failed:
            run.status = "failed"
            if rng.random() < 0.5:
                run.attempts, run.error = 3, "lease expired 3 times"
            else:
                run.error = "smtp: 421 service not available"
        runs.append(run)
    return runs


@dataclass(frozen=True)
class Checkouts:
    """The checkouts, as the recovery sender sees them."""

    last_start: Int64s
    paid: Bools
    paid_at: Int64s
    buyer: Int64s
    email_form: Int64s


def outcome_events(
    rng: np.random.Generator,
    parts: Parts,
    runs: list[Run],
    checkouts: Checkouts,
    n_customers: int,
) -> None:
    """Recovery mail from each succeeded recover run, promo and onboarding mail from the others.

    An abandoned checkout gets at most one recovery mail, from the first run 30 min to 24 h after
    its last start; one paid by then is counted `paid` in that run's result, as the sender would.
    """
    recover = np.array(
        [
            i
            for i, r in enumerate(runs)
            if r.action_id == "recover_abandoned" and r.status == "succeeded"
        ],
        dtype=np.int64,
    )
    mail_at = mail_to = mail_run = np.empty(0, dtype=np.int64)
    if len(recover) and len(checkouts.last_start):
        created = np.array([runs[i].created_us for i in recover], dtype=np.int64)
        started = np.array([runs[i].started_us or 0 for i in recover], dtype=np.int64)
        due = checkouts.last_start + 30 * MINUTE
        chosen = np.searchsorted(created, due)
        in_time = chosen < len(recover)
        chosen = np.minimum(chosen, len(recover) - 1)
        in_time &= created[chosen] < checkouts.last_start + 24 * HOUR
        send_at = started[chosen] + rng.integers(US, 2 * MINUTE, len(chosen))
        converted = checkouts.paid & (checkouts.paid_at <= due)
        eligible = in_time & ~converted & (checkouts.email_form < 4)
        paid_first = eligible & checkouts.paid & (checkouts.paid_at <= send_at)
        for position, count in zip(*np.unique(chosen[paid_first], return_counts=True), strict=True):
            runs[int(recover[position])].skipped_paid = int(count)
        send = eligible & ~paid_first
        # One mail per buyer and run, however many checkouts the buyer abandoned.
        _, first = np.unique(chosen[send] * n_customers + checkouts.buyer[send], return_index=True)
        first.sort()
        mail_at = send_at[send][first]
        mail_to = checkouts.buyer[send][first]
        mail_run = recover[chosen[send][first]]
    parts.add(RECOVERY, mail_at, customer=mail_to, ref=mail_run)
    for kind, action, mean in ((PROMO, "send_promo", 15), (ONBOARD, "onboard_users", 5)):
        at: list[Int64s] = [np.empty(0, dtype=np.int64)]
        who: list[Int64s] = [np.empty(0, dtype=np.int64)]
        which: list[Int64s] = [np.empty(0, dtype=np.int64)]
        for index, run in enumerate(runs):
            if run.action_id != action or run.status != "succeeded" or run.started_us is None:
                continue
            count = min(n_customers, int(rng.poisson(mean)))
            who.append(rng.choice(n_customers, count, replace=False))
            at.append(run.started_us + US + np.arange(count) * int(rng.integers(US, 3 * US)))
            which.append(np.full(count, index))
        parts.add(kind, np.concatenate(at), customer=np.concatenate(who), ref=np.concatenate(which))
    outcome_runs = np.concatenate([parts.blocks[kind]["ref"] for kind in OUTCOMES])
    for index, count in enumerate(np.bincount(outcome_runs, minlength=len(runs))):
        runs[index].sent = int(count)


def runs_frame(profile: Profile, runs: list[Run]) -> pl.DataFrame:
    locale = profile.persona.locale
    rows = []
    for index, run in enumerate(runs):
        params: dict[str, Any] = {"locale": locale}
        if run.action_id == "send_promo":
            params["isUpdate"] = run.is_update
        result = None
        if run.status in ("succeeded", "failed"):
            skipped = {
                SKIP_PAID: run.skipped_paid,
                SKIP_SUPPRESSED: 0,
                SKIP_RECENTLY_EMAILED: 0,
                SKIP_CAPPED: 0,
            }
            result = json.dumps({"sent": run.sent, "skipped": skipped})
        rows.append(
            {
                "id": run.run_id,
                "project_id": profile.project_id,
                "action_id": run.action_id,
                "status": run.status,
                "idempotency_key": f"{run.action_id}:{iso(run.created_us)}:{index}",
                "params": json.dumps(params),
                "attempts": run.attempts,
                "lease_owner": run.lease_owner,
                "lease_expires_at": iso(run.lease_expires_us),
                "created_at": iso(run.created_us),
                "started_at": iso(run.started_us),
                "completed_at": iso(run.completed_us),
                "result": result,
                "error": run.error,
            }
        )
    return pl.DataFrame(rows, schema=_RUN_SCHEMA)


_RUN_SCHEMA = {
    "id": pl.Utf8,
    "project_id": pl.Utf8,
    "action_id": pl.Utf8,
    "status": pl.Utf8,
    "idempotency_key": pl.Utf8,
    "params": pl.Utf8,
    "attempts": pl.Int64,
    "lease_owner": pl.Utf8,
    "lease_expires_at": pl.Utf8,
    "created_at": pl.Utf8,
    "started_at": pl.Utf8,
    "completed_at": pl.Utf8,
    "result": pl.Utf8,
    "error": pl.Utf8,
}
