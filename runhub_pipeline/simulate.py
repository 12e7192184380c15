"""Deterministic demo data for the app database (`runhub simulate`, CONTRACT §1 and §3).

Same spec, same rows: every draw comes from numpy's PCG64 seeded with (seed, project number,
stream), so `p0007` is the same project whatever `--projects` says, and nothing reads the clock.
Rows are generated one project at a time with numpy and polars (no per-event Python loop) and
loaded in one transaction: executemany on SQLite, COPY on PostgreSQL.

Re-running is idempotent: the transaction first deletes what an earlier run could have written,
i.e. every row of projects `p0001..pNNNN` in the app tables (`workflow_sends` included, so the
projects are replaced as a whole) and every event or e-mail row whose id lies in the generated id
range (which catches the rows deliberately written with an unknown or blank project id). Project
k owns ids `[k * ID_BLOCK, (k + 1) * ID_BLOCK)` of `business_events`, `inhouse_analytics_events`
and `inhouse_emails`, numbered in `received_at` (`created_at`) order within the project.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import polars as pl
import sqlalchemy as sa
from psycopg import sql as pg_sql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from runhub_pipeline.resources.app_db import AppDatabase, Dialect
from runhub_pipeline.settings import SettingsError, floor_to_window

Int64s = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

US = 1_000_000
MINUTE = 60 * US
HOUR = 60 * MINUTE
DAY = 24 * HOUR
QUARTER = 15 * MINUTE
ID_BLOCK = 1_000_000_000
MAX_PROJECTS = 9_999
COPY_ROWS = 200_000

BUSINESS_RULES = (
    "unknown_project",
    "missing_event_type",
    "bad_occurred_at",
    "future_occurred_at",
    "bad_amount",
    "bad_currency",
    "bad_payload",
)
ANALYTICS_RULES = ("unknown_project", "missing_session", "bad_occurred_at", "future_occurred_at")
_MONEY_RULES = ("bad_amount", "bad_currency")


class SimulationError(SettingsError):
    """The spec cannot be simulated; one line for the user (the CLI reports SettingsErrors)."""


@dataclass(frozen=True)
class SimulationSpec:
    projects: int
    days: int
    seed: int
    end: datetime
    """Aware UTC, already floored to 15 minutes by the caller; every row is received before it."""
    events_per_day: int = 400
    """Mean business + analytics events per day of a median-size project."""
    bad_rate: float = 0.005
    """Share of event rows that break a quarantine rule, split evenly over the table's rules."""


@dataclass(frozen=True)
class SimulationResult:
    projects: int
    business_events: int
    analytics_events: int
    duplicates: int = 0
    workflow_runs: int = 0
    emails: int = 0
    suppressions: int = 0
    bad_business: dict[str, int] = field(default_factory=dict)
    """Rows written to break each rule of CONTRACT §4; it is also their quarantine reason."""
    bad_analytics: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Persona:
    timezone: str
    locale: str
    currency: str
    name: str
    digest_hour: int = 8


# Assigned round-robin, so any run with five or more projects has the awkward zones: +05:45,
# -03:30 with DST, DST in Europe and America, and a digest hour inside New York's DST gap.
_PERSONAS = (
    _Persona("UTC", "en", "USD", "Northwind Goods"),
    _Persona("Asia/Kathmandu", "ne-NP", "USD", "Himalayan Tea House"),
    _Persona("America/New_York", "en-US", "USD", "Brooklyn Bike Co", digest_hour=2),
    _Persona("Europe/Berlin", "de", "EUR", "Kaffeerösterei Müller"),
    _Persona("America/St_Johns", "en-CA", "USD", "Signal Hill Outfitters"),
    _Persona("Asia/Kolkata", "en-IN", "USD", "Chai & Co"),
    _Persona("Africa/Cairo", "ar-EG", "USD", "متجر النيل"),
    _Persona("America/Toronto", "fr-CA", "CAD", "Boulangerie Saint-Laurent"),
    _Persona("America/Sao_Paulo", "pt-BR", "BRL", "Loja Ipanema"),
    _Persona("Europe/Vienna", "de-AT", "EUR", "Wiener Werkstatt", digest_hour=7),
    _Persona("Europe/Madrid", "es", "EUR", "Tienda Sol"),
    _Persona("America/Mexico_City", "es-MX", "USD", "Mercado Azul", digest_hour=9),
    _Persona("Australia/Sydney", "en-AU", "USD", "Bondi Surf Supply"),
    _Persona("Europe/Paris", "fr", "EUR", "Atelier Lumière"),
    _Persona("Asia/Tokyo", "ja-JP", "USD", "Kyoto Ceramics"),
    _Persona("Pacific/Chatham", "en-NZ", "USD", "Chatham Island Wool"),
    _Persona("Europe/London", "en_GB", "GBP", "Camden Record Shop", digest_hour=18),
    _Persona("America/Los_Angeles", "EN-us", "USD", "Venice Skate Lab"),
)
# p0001..p0008 always have events, an owner and digests: small runs cover those zones and ar-EG.
_GUARANTEED = 8

_CURRENCIES = ("USD", "EUR", "GBP", "CAD", "BRL")
_EVENT_TYPES = (
    "checkout_started",
    "payment_succeeded",
    "payment_failed",
    "refund_issued",
    "form_submitted",
    "lead_created",
    "recovery_email_sent",
    "promo_email_sent",
    "onboarding_email_sent",
)
CHECKOUT, PAID, FAILED, REFUND, FORM, LEAD, RECOVERY, PROMO, ONBOARD = range(9)
_MONEY = (PAID, FAILED, REFUND)
_OUTCOMES = (RECOVERY, PROMO, ONBOARD)
_KEY_PREFIX = ("chk_", "pay_", "pfl_", "rfd_", "frm_", "lead_")
_FAILURE_CODES = ("card_declined", "insufficient_funds", "expired_card", "authentication_required")
_REFUND_REASONS = ("requested_by_customer", "duplicate", "fraudulent")
_FORMS = ("contact", "newsletter", "quote_request")

_FIRST = (
    "anna", "ben", "carla", "dmitri", "elif", "farah", "gustavo", "hana", "ivan", "jana",
    "kofi", "lucia", "mehmet", "nadia", "omar", "priya", "quentin", "rosa", "sven", "tariq",
    "uma", "vera", "wei", "yusuf", "zoe", "amir", "beatriz", "chloe", "diego", "emma",
)  # fmt: skip
_LAST = (
    "smith", "garcia", "muller", "rossi", "nguyen", "khan", "silva", "dubois", "kowalski",
    "haddad", "tanaka", "sharma", "oconnor", "schmidt", "fernandez", "novak",
)  # fmt: skip
_DOMAINS = (
    "gmail.com", "yahoo.fr", "web.de", "outlook.com", "hotmail.es", "icloud.com", "proton.me",
    "gmx.at", "uol.com.br", "example.org",
)  # fmt: skip
# Addresses the app accepted but email_norm rejects: no identity, never a quarantine reason.
_INVALID_EMAILS = ("n/a", "john@localhost", "jane.doe@gmail", "<bob@example.com>", "   ")

_PATHS = (
    "/", "/pricing", "/products", "/products/espresso-grinder", "/products/linen-apron",
    "/blog", "/blog/how-we-roast", "/about", "/contact", "/cart", "/search?q=gift+card",
    "/fr/boutique", "/ar/%D8%A7%D9%84%D9%85%D8%AA%D8%AC%D8%B1", "/docs/getting-started",
    "/checkout",
)  # fmt: skip
_CHECKOUT_PATH = len(_PATHS) - 1
_PATH_P = np.array([8, 4, 5, 3, 3, 3, 2, 1, 1, 2, 1, 1, 1, 1, 0], dtype=np.float64)
_PATH_P /= _PATH_P.sum()
_EVENT_NAMES = ("session_start", "page_view", "outbound_click")

# Relative traffic by local hour: quiet nights, busy afternoons and evenings.
_HOURLY = np.array(
    [0.25, 0.15, 0.1, 0.08, 0.08, 0.12, 0.25, 0.45, 0.65, 0.8, 0.9, 0.95,
     1.0, 0.95, 0.9, 0.9, 0.95, 1.0, 1.0, 0.95, 0.85, 0.7, 0.5, 0.35],
)  # fmt: skip
_WEEKEND = 0.8

# Behaviour per session and per checkout; _EVENTS_PER_SESSION turns events_per_day into sessions.
_PAGE_STOP = 0.4  # page views per session are geometric, mean 1 / 0.4
_P_CLICK = 0.05
_P_CHECKOUT = 0.08
_P_RESTART = 0.08  # a second checkout_started in the same session: one payment matches both
_P_FAST, _P_SLOW, _P_RETRY = 0.55, 0.15, 0.08  # the other 22% of checkouts are never paid
_P_RETRY_SUCCESS = 0.7
_P_FORM = 0.03
_P_LEAD = 0.7
_P_REFUND = 0.04
_P_DIRECT = 0.004  # payments without a checkout (invoices), per session
_P_DUPLICATE = 0.02
_P_FOREIGN = 0.03
_EVENTS_PER_SESSION = (
    1
    + 1 / _PAGE_STOP
    + _P_CLICK
    + (1 + _P_DUPLICATE)
    * (
        _P_CHECKOUT
        * (
            1
            + _P_RESTART
            + (_P_FAST + _P_SLOW + _P_RETRY * _P_RETRY_SUCCESS) * (1 + _P_REFUND)
            + _P_RETRY * 2  # mean failures of a retried checkout
            + 0.15  # recovery e-mails, when the project auto-recovers
        )
        + _P_FORM * (1 + _P_LEAD)
        + _P_DIRECT
    )
)
_SIZE_ALPHA = 1.3  # Pareto shape of project volume: a few projects hold most of the events
_SIZE_CAP = 25.0

_DIGEST_SUBJECTS = {
    "en": "Your Run Hub daily digest for {day}",
    "fr": "Votre résumé Run Hub du {day}",
    "es": "Tu resumen diario de Run Hub del {day}",
    "de": "Ihre Run Hub Tageszusammenfassung für {day}",
    "ar": "ملخص Run Hub اليومي ليوم {day}",
}


def project_id(number: int) -> str:
    return f"p{number:04d}"


def simulate(
    app_db: AppDatabase,
    spec: SimulationSpec,
    progress: Callable[[str], None] | None = None,
) -> SimulationResult:
    """Replace projects `p0001..pNNNN` and their rows with the data `spec` describes.

    One transaction: a failure leaves the database as it was. `progress` gets a line per project.
    """
    _validate(spec)
    report = progress or (lambda _message: None)
    end_us = _to_us(spec.end)
    start_us = end_us - spec.days * DAY
    profiles = [_profile(spec, number, start_us, end_us) for number in range(1, spec.projects + 1)]
    totals = _Totals()
    with app_db.begin() as connection:
        report(f"removing earlier rows of {project_id(1)}..{project_id(spec.projects)}")
        _delete_previous(connection, spec.projects)
        loader = _Loader(connection, app_db.dialect)
        loader.load("projects", _projects_frame(profiles))
        for profile in profiles:
            rng = np.random.default_rng(np.random.SeedSequence([spec.seed, profile.number, 1]))
            batch = _generate_project(rng, spec, profile, start_us, end_us, app_db.dialect)
            loader.load("business_events", batch.business)
            loader.load("inhouse_analytics_events", batch.analytics)
            loader.load("workflow_runs", batch.runs)
            loader.load("inhouse_emails", batch.emails)
            loader.load("inhouse_email_suppressions", batch.suppressions)
            totals.add(batch)
            report(
                f"{profile.project_id} ({profile.number}/{spec.projects}): "
                f"{batch.business.height:,} business + {batch.analytics.height:,} analytics events"
            )
        if app_db.dialect == "postgresql":
            _bump_identities(connection)
    report(
        f"simulated {spec.projects} projects: {totals.business:,} business and "
        f"{totals.analytics:,} analytics events"
    )
    return SimulationResult(
        projects=spec.projects,
        business_events=totals.business,
        analytics_events=totals.analytics,
        duplicates=totals.duplicates,
        workflow_runs=totals.runs,
        emails=totals.emails,
        suppressions=totals.suppressions,
        bad_business=totals.bad_business,
        bad_analytics=totals.bad_analytics,
    )


def _validate(spec: SimulationSpec) -> None:
    if not 1 <= spec.projects <= MAX_PROJECTS:
        raise SimulationError(f"--projects must be between 1 and {MAX_PROJECTS}")
    if spec.days < 1:
        raise SimulationError("--days must be at least 1")
    if spec.seed < 0:
        raise SimulationError("--seed must not be negative")
    if spec.events_per_day < 0:
        raise SimulationError("--events-per-day must not be negative")
    if not 0 <= spec.bad_rate <= 1:
        raise SimulationError("--bad-rate must be between 0 and 1")
    if spec.end.tzinfo is None or spec.end != floor_to_window(spec.end):
        raise SimulationError(f"--end must be an aware time on a 15-minute boundary: {spec.end}")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=int(value))


def _iso(value: int | None) -> str | None:
    """Fixed-width UTC text, the form every time of the small tables is written in."""
    return None if value is None else _from_us(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- projects -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Profile:
    number: int
    persona: _Persona
    name: str
    size: float
    owner_email: str | None
    digest_enabled: bool
    auto_recover: bool
    stripe_connected: bool
    tracking_installed: bool
    forms_count: int
    created_us: int
    active_start_us: int
    active_end_us: int
    digests: tuple[tuple[date, int], ...]
    """(reported local day, send time) of each digest already sent."""
    digest_next_us: int | None

    @property
    def project_id(self) -> str:
        return project_id(self.number)


def _profile(spec: SimulationSpec, number: int, start_us: int, end_us: int) -> _Profile:
    """A project's attributes, from their own stream so they do not depend on the events drawn."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, number, 0]))
    persona = _PERSONAS[(number - 1) % len(_PERSONAS)]
    cycle = (number - 1) // len(_PERSONAS)
    size = min(_SIZE_CAP, float(rng.pareto(_SIZE_ALPHA) + 1) / 2 ** (1 / _SIZE_ALPHA))
    guaranteed = number <= _GUARANTEED
    # Some projects are created inside the simulated range; some went quiet (churned) so the
    # empty-state metric has something to find.
    is_new = not guaranteed and rng.random() < 0.1
    is_dormant = not guaranteed and rng.random() < 0.08
    created_us = start_us - int(rng.uniform(5, 700) * DAY)
    if is_new:
        created_us = start_us + int(rng.uniform(0, 0.8) * (end_us - start_us))
    active_end_us = end_us - int(rng.uniform(8, 30) * DAY) if is_dormant else end_us
    owner: str | None = f"{_FIRST[number % len(_FIRST)]}.owner{number}@"
    owner = f"{owner}{_DOMAINS[number % len(_DOMAINS)]}"
    if not guaranteed and rng.random() < 0.05:
        owner = None
    elif rng.random() < 0.1:
        owner = f"  {owner.capitalize()} "
    digest_enabled = guaranteed or bool(rng.random() < 0.85)
    digests: list[tuple[date, int]] = []
    digest_next_us = None
    if digest_enabled and owner is not None:
        digests, digest_next_us = _digest_schedule(persona, max(start_us, created_us), end_us - DAY)
    return _Profile(
        number=number,
        persona=persona,
        name=persona.name if cycle == 0 else f"{persona.name} {cycle + 1}",
        size=size,
        owner_email=owner,
        digest_enabled=digest_enabled,
        auto_recover=number % 2 == 1 or bool(rng.random() < 0.3),
        stripe_connected=bool(rng.random() < 0.9),
        tracking_installed=bool(rng.random() < 0.9),
        forms_count=int(rng.integers(0, 5)),
        created_us=created_us,
        active_start_us=max(start_us, created_us - created_us % QUARTER),
        active_end_us=active_end_us,
        digests=tuple(digests),
        digest_next_us=digest_next_us,
    )


def _digest_schedule(
    persona: _Persona, first_us: int, until_us: int
) -> tuple[list[tuple[date, int]], int]:
    """Digests sent at the local digest hour from `first_us` to `until_us`, and the next one due.

    The next one falls in the last simulated day, so a sensor run at `end` has one to send. In a
    DST gap the hour does not exist; zoneinfo's fold=0 reading lands on the next existing time.
    """
    tz = ZoneInfo(persona.timezone)
    day = _from_us(first_us).astimezone(tz).date()
    sent: list[tuple[date, int]] = []
    while True:
        local = datetime(day.year, day.month, day.day, persona.digest_hour, tzinfo=tz)
        at = _to_us(local.astimezone(UTC))
        if at >= until_us:
            return sent, at
        if at >= first_us:
            sent.append((day - timedelta(days=1), at))
        day += timedelta(days=1)


def _projects_frame(profiles: list[_Profile]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "project_id": [p.project_id for p in profiles],
            "name": [p.name for p in profiles],
            "timezone": [p.persona.timezone for p in profiles],
            "currency": [p.persona.currency for p in profiles],
            "locale": [p.persona.locale for p in profiles],
            "owner_email": [p.owner_email for p in profiles],
            "digest_enabled": [p.digest_enabled for p in profiles],
            "digest_hour": [p.persona.digest_hour for p in profiles],
            "digest_next_at": [_iso(p.digest_next_us) for p in profiles],
            "auto_recover_abandoned": [p.auto_recover for p in profiles],
            "stripe_connected": [p.stripe_connected for p in profiles],
            "tracking_installed": [p.tracking_installed for p in profiles],
            "forms_count": [p.forms_count for p in profiles],
            "created_at": [_iso(p.created_us) for p in profiles],
        },
        schema_overrides={"owner_email": pl.Utf8, "digest_next_at": pl.Utf8},
    )


# --- time zones -----------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _zone_offsets(zone: str, first_us: int, n_bins: int) -> Int64s:
    """UTC offset in seconds of `zone` for each 15-minute bin from `first_us`.

    Every real offset is a multiple of 15 minutes, so transitions fall on bin starts; the zone is
    asked once a day, and per bin only on the days whose offset changes.
    """
    tz = ZoneInfo(zone)

    def offset(us: int) -> int:
        delta = _from_us(us).astimezone(tz).utcoffset()
        return int(delta.total_seconds()) if delta is not None else 0

    offsets = np.empty(n_bins, dtype=np.int64)
    for day_start in range(0, n_bins, 96):
        day_end = min(day_start + 96, n_bins)
        first, last = offset(first_us + day_start * QUARTER), offset(first_us + day_end * QUARTER)
        if first == last:
            offsets[day_start:day_end] = first
        else:
            offsets[day_start:day_end] = [
                offset(first_us + i * QUARTER) for i in range(day_start, day_end)
            ]
    offsets.flags.writeable = False
    return offsets


@dataclass(frozen=True)
class _Clock:
    """A project's zone over the simulated range as arrays: bin starts and their offsets."""

    first_us: int
    offsets: Int64s

    @property
    def bins(self) -> Int64s:
        return self.first_us + np.arange(len(self.offsets), dtype=np.int64) * QUARTER

    def offset_of(self, times: Int64s) -> Int64s:
        index = np.clip((times - self.first_us) // QUARTER, 0, len(self.offsets) - 1)
        return self.offsets[index]


def _clock(zone: str, start_us: int, end_us: int) -> _Clock:
    # Two spare days after `end`: late payments and clock-skewed events may occur after it.
    n_bins = (end_us - start_us + 2 * DAY) // QUARTER
    return _Clock(start_us, _zone_offsets(zone, start_us, n_bins))


# --- one project ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Batch:
    business: pl.DataFrame
    analytics: pl.DataFrame
    runs: pl.DataFrame
    emails: pl.DataFrame
    suppressions: pl.DataFrame
    duplicates: int
    bad_business: dict[str, int]
    bad_analytics: dict[str, int]


@dataclass
class _Totals:
    business: int = 0
    analytics: int = 0
    duplicates: int = 0
    runs: int = 0
    emails: int = 0
    suppressions: int = 0
    bad_business: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BUSINESS_RULES, 0))
    bad_analytics: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ANALYTICS_RULES, 0))

    def add(self, batch: _Batch) -> None:
        self.business += batch.business.height
        self.analytics += batch.analytics.height
        self.duplicates += batch.duplicates
        self.runs += batch.runs.height
        self.emails += batch.emails.height
        self.suppressions += batch.suppressions.height
        for rule, count in batch.bad_business.items():
            self.bad_business[rule] += count
        for rule, count in batch.bad_analytics.items():
            self.bad_analytics[rule] += count


@dataclass(frozen=True)
class _Sessions:
    start: Int64s
    duration: Int64s
    visitor: Int64s
    checkout: Bools


@dataclass(frozen=True)
class _Context:
    """What rendering a project's rows needs besides the rows."""

    profile: _Profile
    clock: _Clock
    emails: pl.Series
    run_ids: tuple[str, ...]
    start_us: int
    end_us: int
    bad_rate: float
    dialect: Dialect


def _generate_project(
    rng: np.random.Generator,
    spec: SimulationSpec,
    profile: _Profile,
    start_us: int,
    end_us: int,
    dialect: Dialect,
) -> _Batch:
    clock = _clock(profile.persona.timezone, start_us, end_us)
    analytics, sessions = _analytics_events(rng, spec, profile, clock)
    # Customers are the visitors: nobody is mailed or suppressed who never came by.
    n_customers = int(sessions.visitor.max()) + 1 if len(sessions.visitor) else 0
    emails = _customer_emails(max(n_customers, 1), profile.number)
    runs = _runs(rng, profile, start_us, end_us)
    parts = _business_events(rng, profile, sessions, runs, n_customers)
    context = _Context(
        profile,
        clock,
        emails,
        tuple(run.run_id for run in runs),
        start_us,
        end_us,
        spec.bad_rate,
        dialect,
    )
    business, duplicates, bad_business = _finish_business(rng, parts.frame(), context)
    analytics_frame, bad_analytics = _finish_analytics(rng, analytics, context)
    return _Batch(
        business=business,
        analytics=analytics_frame,
        runs=_runs_frame(profile, runs),
        emails=_emails_frame(rng, profile, start_us, end_us),
        suppressions=_suppressions_frame(rng, profile, emails[:n_customers], start_us, end_us),
        duplicates=duplicates,
        bad_business=bad_business,
        bad_analytics=bad_analytics,
    )


def _segment_offsets(gaps: Int64s, counts: Int64s) -> Int64s:
    """Running sums of `gaps` that restart at each segment of `counts` rows."""
    counts = counts[counts > 0]
    if len(gaps) == 0:
        return gaps
    total = np.cumsum(gaps)
    firsts = np.cumsum(counts) - counts
    return total - np.repeat(total[firsts] - gaps[firsts], counts)


def _analytics_events(
    rng: np.random.Generator, spec: SimulationSpec, profile: _Profile, clock: _Clock
) -> tuple[pl.DataFrame, _Sessions]:
    """Sessions (session_start, page views, a few clicks) following local-time daily rhythm."""
    bins = clock.bins
    local = bins + clock.offsets * US
    weekday = (local // DAY + 3) % 7  # 1970-01-01 was a Thursday
    weights = _HOURLY[(local // HOUR) % 24] * np.where(weekday >= 5, _WEEKEND, 1.0)
    active = (bins >= profile.active_start_us) & (bins < profile.active_end_us)
    weights = np.where(active, weights, 0.0)
    active_days = int(active.sum()) / 96
    mean = spec.events_per_day * profile.size * active_days / _EVENTS_PER_SESSION
    total = weights.sum()
    n_regular = int(rng.poisson(mean)) if total > 0 else 0
    chosen = rng.choice(len(bins), size=n_regular, p=weights / total if total > 0 else None)
    regular = bins[chosen] + rng.integers(0, QUARTER, n_regular)
    # A few sessions start just before local midnight and run past it: they count on both days.
    midnights = bins[active & (local % DAY == 0) & (bins > profile.active_start_us + HOUR)]
    n_midnight = min(len(midnights), int(active_days) // 3 + 1) if n_regular else 0
    midnight = rng.permutation(midnights)[:n_midnight] - rng.integers(
        MINUTE, 10 * MINUTE, n_midnight
    )
    start = np.concatenate([regular, midnight])
    is_midnight = np.arange(len(start)) >= n_regular
    order = np.argsort(start, kind="stable")
    start, is_midnight = start[order], is_midnight[order]
    n = len(start)

    page_views = np.where(is_midnight, 4, np.minimum(rng.geometric(_PAGE_STOP, n), 40))
    clicks = (rng.random(n) < _P_CLICK).astype(np.int64)
    visitor = rng.integers(0, max(1, int(n * 0.55)), n)
    checkout = rng.random(n) < _P_CHECKOUT
    counts = 1 + page_views + clicks
    session = np.repeat(np.arange(n), counts)
    position = np.arange(len(session)) - np.repeat(np.cumsum(counts) - counts, counts)
    is_click = (position == np.repeat(counts - 1, counts)) & np.repeat(clicks > 0, counts)
    rows = len(session)
    gaps = np.where(
        rng.random(rows) < 0.04, rng.exponential(12 * MINUTE, rows), rng.exponential(45 * US, rows)
    ).astype(np.int64)
    slow_gap = rng.integers(4 * MINUTE, 8 * MINUTE, rows)
    gaps = np.where(np.repeat(is_midnight, counts), slow_gap, gaps)
    gaps = np.where(position == 1, rng.integers(US // 5, 3 * US, rows), gaps)
    gaps = np.where(is_click, rng.integers(US, 20 * US, rows), gaps)
    offsets = _segment_offsets(np.where(position == 0, 0, gaps), counts)
    last_row = np.cumsum(counts) - 1

    path = rng.choice(len(_PATH_P), rows, p=_PATH_P)
    landing = rng.choice(len(_PATH_P), n, p=_PATH_P)
    path = np.where(position <= 1, np.repeat(landing, counts), path)
    path[(last_row - clicks)[checkout]] = _CHECKOUT_PATH
    frame = pl.DataFrame(
        {
            "session": session,
            "name_code": np.where(position == 0, 0, np.where(is_click, 2, 1)),
            "path_code": path,
            "visitor": np.repeat(visitor, counts),
            "no_visitor": np.repeat(rng.random(n) < 0.01, counts),
            "occurred_us": np.repeat(start, counts) + offsets,
        },
        schema={
            "session": pl.Int64,
            "name_code": pl.Int64,
            "path_code": pl.Int64,
            "visitor": pl.Int64,
            "no_visitor": pl.Boolean,
            "occurred_us": pl.Int64,
        },
    )
    return frame, _Sessions(start, offsets[last_row], visitor, checkout)


def _customer_emails(n: int, salt: int) -> pl.Series:
    """One distinct lower-case address per visitor index."""
    index = np.arange(n, dtype=np.int64)
    frame = pl.DataFrame(
        {
            "first": pl.Series(_FIRST).gather(index % len(_FIRST)),
            "last": pl.Series(_LAST).gather((index // len(_FIRST)) % len(_LAST)),
            "number": index // (len(_FIRST) * len(_LAST)),
            "domain": pl.Series(_DOMAINS).gather((index * 7 + salt) % len(_DOMAINS)),
        }
    )
    number = (
        pl.when(pl.col("number") > 0).then(pl.col("number").cast(pl.Utf8)).otherwise(pl.lit(""))
    )
    return frame.select(
        pl.concat_str("first", pl.lit("."), "last", number, pl.lit("@"), "domain")
    ).to_series()


class _Parts:
    """Business events as numeric columns, one block per event type, added in type order.

    `ref` points into another block (a payment's checkout, a refund's payment) or at a run.
    """

    _DEFAULTS = {
        "session": -1,  # session index, -1 = NULL
        "other_session": 0,  # 1: the buyer came back in a session the analytics never saw
        "customer": -1,  # visitor index, -1 = NULL
        "email_form": 0,  # 0 as is, 1 upper, 2 capitalized, 3 padded, 4 invalid
        "amount": -1,
        "currency": -1,
        "ref": -1,
        "extra": 0,
    }

    def __init__(self) -> None:
        self.blocks: list[dict[str, Int64s]] = []

    def add(self, kind: int, occurred: Int64s, **columns: Any) -> None:
        assert len(self.blocks) == kind, "blocks are added in event-type order"
        n = len(occurred)
        values = {**self._DEFAULTS, **columns, "kind": kind, "occurred_us": occurred}
        self.blocks.append(
            {
                name: np.broadcast_to(np.asarray(value, dtype=np.int64), n)
                for name, value in values.items()
            }
        )

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                name: np.concatenate([block[name] for block in self.blocks])
                for name in self.blocks[0]
            }
        )


def _prices(rng: np.random.Generator, n: int) -> Int64s:
    cents = np.round(rng.lognormal(np.log(4500), 0.9, n) / 100) * 100
    return np.maximum(99, cents - (rng.random(n) < 0.6)).astype(np.int64)


def _email_forms(rng: np.random.Generator, n: int, upper: float, capital: float) -> Int64s:
    u = rng.random(n)
    forms = np.where(u < upper, 1, np.where(u < upper + capital, 2, 0))
    forms = np.where((u > 0.99) & (u <= 0.995), 4, forms)  # the app accepted a junk address
    return np.where(u > 0.995, 3, forms).astype(np.int64)


def _business_events(
    rng: np.random.Generator,
    profile: _Profile,
    sessions: _Sessions,
    runs: list[_Run],
    n_customers: int,
) -> _Parts:
    """Checkouts, payments (fast, slow, retried, never), refunds, forms, leads, outcome mail."""
    parts = _Parts()
    cat = np.concatenate
    n_sessions = len(sessions.start)
    home = _CURRENCIES.index(profile.persona.currency)

    chk_session = np.flatnonzero(sessions.checkout)
    n = len(chk_session)
    started = sessions.start[chk_session] + sessions.duration[chk_session]
    started += rng.integers(5 * US, 90 * US, n)
    buyer = sessions.visitor[chk_session]
    amount = _prices(rng, n)
    foreign = (home + 1 + rng.integers(0, len(_CURRENCIES) - 1, n)) % len(_CURRENCIES)
    currency = np.where(rng.random(n) < _P_FOREIGN, foreign, home)
    email_form = _email_forms(rng, n, 0.0, 0.0)
    restarted = rng.random(n) < _P_RESTART
    restart_at = started + rng.integers(MINUTE, 10 * MINUTE, n)
    last_start = np.where(restarted, restart_at, started)
    last_checkout = np.where(restarted, n + np.cumsum(restarted) - 1, np.arange(n))
    items = rng.integers(1, 6, n)
    parts.add(
        CHECKOUT,
        cat([started, restart_at[restarted]]),
        session=cat([chk_session, chk_session[restarted]]),
        customer=cat([buyer, buyer[restarted]]),
        email_form=cat([email_form, email_form[restarted]]),
        amount=cat([amount, amount[restarted]]),
        currency=cat([currency, currency[restarted]]),
        extra=cat([items, items[restarted]]),
    )

    u = rng.random(n)
    fast = u < _P_FAST
    slow = (u >= _P_FAST) & (u < _P_FAST + _P_SLOW)
    retry = (u >= _P_FAST + _P_SLOW) & (u < _P_FAST + _P_SLOW + _P_RETRY)
    n_fail = np.where(retry, rng.integers(1, 4, n), 0)
    fail_gaps = rng.integers(20 * US, 4 * MINUTE, int(n_fail.sum()))
    fail_at = np.repeat(last_start, n_fail) + _segment_offsets(fail_gaps, n_fail)
    last_fail = np.zeros(n, dtype=np.int64)
    last_fail[retry] = fail_at[np.cumsum(n_fail[retry]) - 1] if len(fail_at) else 0
    fast_delay = np.clip(rng.exponential(3 * MINUTE, n), 15 * US, 29 * MINUTE + 50 * US)
    slow_delay = np.exp(rng.uniform(np.log(31 * MINUTE), np.log(47.5 * HOUR), n))
    retry_paid = retry & (rng.random(n) < _P_RETRY_SUCCESS)
    paid = fast | slow | retry_paid
    paid_at = np.where(
        fast,
        last_start + fast_delay.astype(np.int64),
        np.where(
            slow,
            last_start + slow_delay.astype(np.int64),
            last_fail + rng.integers(30 * US, 6 * MINUTE, n),
        ),
    )
    # A slow payment is found by e-mail only, often typed in another letter case.
    pay_form = np.where(slow, _email_forms(rng, n, 0.15, 0.15), _email_forms(rng, n, 0.05, 0.0))
    guest = ~slow & (rng.random(n) < 0.1)
    new_session = slow & (rng.random(n) < 0.4)
    n_direct = int(rng.poisson(_P_DIRECT * n_sessions))
    direct_buyer = rng.integers(0, n_customers, n_direct)
    pay_at = cat(
        [paid_at[paid], rng.integers(profile.active_start_us, profile.active_end_us, n_direct)]
    )
    pay_amount = cat([amount[paid], _prices(rng, n_direct)])
    pay_currency = cat([currency[paid], np.full(n_direct, home)])
    pay_buyer = cat([buyer[paid], direct_buyer])
    parts.add(
        PAID,
        pay_at,
        session=cat([np.where(slow & ~new_session, -1, chk_session)[paid], np.full(n_direct, -1)]),
        other_session=cat([new_session[paid], np.zeros(n_direct, dtype=bool)]),
        customer=cat([np.where(guest, -1, buyer)[paid], direct_buyer]),
        email_form=cat([pay_form[paid], np.zeros(n_direct, dtype=np.int64)]),
        amount=pay_amount,
        currency=pay_currency,
        ref=cat([last_checkout[paid], np.full(n_direct, -1)]),
    )
    parts.add(
        FAILED,
        fail_at,
        session=np.repeat(chk_session, n_fail),
        customer=np.repeat(buyer, n_fail),
        amount=np.repeat(amount, n_fail),
        currency=np.repeat(currency, n_fail),
        extra=rng.integers(0, len(_FAILURE_CODES), len(fail_at)),
    )

    refunded = np.flatnonzero(rng.random(len(pay_at)) < _P_REFUND)
    share = np.where(rng.random(len(refunded)) < 0.3, rng.uniform(0.2, 0.8, len(refunded)), 1.0)
    parts.add(
        REFUND,
        pay_at[refunded] + rng.integers(DAY, 10 * DAY, len(refunded)),
        customer=pay_buyer[refunded],
        amount=np.round(pay_amount[refunded] * share),
        currency=pay_currency[refunded],
        ref=refunded,
        extra=rng.integers(0, len(_REFUND_REASONS), len(refunded)),
    )

    form_session = np.flatnonzero(rng.random(n_sessions) < _P_FORM)
    n_forms = len(form_session)
    form_at = sessions.start[form_session] + (
        sessions.duration[form_session] * rng.uniform(0.3, 1.0, n_forms)
    ).astype(np.int64)
    form_id = rng.integers(0, len(_FORMS), n_forms)
    form_email = _email_forms(rng, n_forms, 0.03, 0.05)
    parts.add(
        FORM,
        form_at,
        session=form_session,
        customer=sessions.visitor[form_session],
        email_form=form_email,
        extra=form_id,
    )
    lead = np.flatnonzero(rng.random(n_forms) < _P_LEAD)
    parts.add(
        LEAD,
        form_at[lead] + rng.integers(US, 10 * MINUTE, len(lead)),
        customer=sessions.visitor[form_session[lead]],
        email_form=form_email[lead],
        ref=lead,
        extra=form_id[lead],
    )
    checkouts = _Checkouts(last_start, paid, paid_at, buyer, email_form)
    _outcome_events(rng, parts, runs, checkouts, n_customers)
    return parts


# --- workflow runs and outcome e-mails ------------------------------------------------------


@dataclass
class _Run:
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


def _runs(rng: np.random.Generator, profile: _Profile, start_us: int, end_us: int) -> list[_Run]:
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
        run = _Run(
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
class _Checkouts:
    """The checkouts, as the recovery sender sees them."""

    last_start: Int64s
    paid: Bools
    paid_at: Int64s
    buyer: Int64s
    email_form: Int64s


def _outcome_events(
    rng: np.random.Generator,
    parts: _Parts,
    runs: list[_Run],
    checkouts: _Checkouts,
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
    outcome_runs = np.concatenate([parts.blocks[kind]["ref"] for kind in _OUTCOMES])
    for index, count in enumerate(np.bincount(outcome_runs, minlength=len(runs))):
        runs[index].sent = int(count)


def _runs_frame(profile: _Profile, runs: list[_Run]) -> pl.DataFrame:
    locale = profile.persona.locale
    rows = []
    for index, run in enumerate(runs):
        params: dict[str, Any] = {"locale": locale}
        if run.action_id == "send_promo":
            params["isUpdate"] = run.is_update
        result = None
        if run.status in ("succeeded", "failed"):
            skipped = {"paid": run.skipped_paid, "suppressed": 0, "cooldown": 0, "capped": 0}
            result = json.dumps({"sent": run.sent, "skipped": skipped})
        rows.append(
            {
                "id": run.run_id,
                "project_id": profile.project_id,
                "action_id": run.action_id,
                "status": run.status,
                "idempotency_key": f"{run.action_id}:{_iso(run.created_us)}:{index}",
                "params": json.dumps(params),
                "attempts": run.attempts,
                "lease_owner": run.lease_owner,
                "lease_expires_at": _iso(run.lease_expires_us),
                "created_at": _iso(run.created_us),
                "started_at": _iso(run.started_us),
                "completed_at": _iso(run.completed_us),
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


# --- rendering events -----------------------------------------------------------------------


def _arrival_lags(rng: np.random.Generator, n: int) -> Int64s:
    """received_at - occurred_at: mostly seconds, some minutes and hours, a tail up to 2 days,
    and a few negative ones from client clocks running ahead (never by more than 10 minutes)."""
    u = rng.random(n)
    seconds = np.minimum(rng.lognormal(np.log(0.8), 1.0, n), 60.0) * US
    lag = np.where(u < 0.965, seconds, rng.uniform(MINUTE, HOUR, n))
    lag = np.where(u >= 0.99, rng.uniform(HOUR, DAY, n), lag)
    lag = np.where(u >= 0.996, rng.uniform(DAY, 2 * DAY - MINUTE, n), lag)
    lag = np.where(u >= 0.998, -rng.uniform(US, 10 * MINUTE, n), lag)
    return lag.astype(np.int64)


def _time_formats(rng: np.random.Generator, n: int) -> Int64s:
    """How occurred_at is written on SQLite: 0 `...ffffffZ`, 1 local time with its offset,
    2 `YYYY-MM-DD HH:MM:SS` without offset (UTC), 3 milliseconds with `+00:00`."""
    u = rng.random(n)
    return np.select([u < 0.93, u < 0.96, u < 0.98], [0, 1, 2], 3).astype(np.int64)


def _utc_text(microseconds: pl.Expr) -> pl.Expr:
    return pl.from_epoch(microseconds, time_unit="us").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")


def _occurred_text(context: _Context) -> pl.Expr:
    utc = _utc_text(pl.col("occurred_us"))
    if context.dialect == "postgresql":
        return utc  # a typed column: the text form does not survive, only the instant
    signs = {int(s): f"{'-' if s < 0 else '+'}{abs(s) // 3600:02d}:{abs(s) % 3600 // 60:02d}"
             for s in np.unique(context.clock.offsets)}  # fmt: skip
    offset = pl.col("offset_s").replace_strict(signs, default="+00:00", return_dtype=pl.Utf8)
    local = pl.from_epoch(pl.col("occurred_us") + pl.col("offset_s") * US, time_unit="us")
    naive = pl.from_epoch(pl.col("occurred_us"), time_unit="us")
    return (
        pl.when(pl.col("fmt") == 1)
        .then(pl.concat_str(local.dt.strftime("%Y-%m-%dT%H:%M:%S%.6f"), offset))
        .when(pl.col("fmt") == 2)
        .then(naive.dt.strftime("%Y-%m-%d %H:%M:%S"))
        .when(pl.col("fmt") == 3)
        .then(pl.concat_str(naive.dt.strftime("%Y-%m-%dT%H:%M:%S%.3f"), pl.lit("+00:00")))
        .otherwise(utc)
    )


def _pick(options: Sequence[Any]) -> pl.Expr:
    """One of `options` per row, chosen by the row's `form` draw; an option may be an Expr."""

    def value(option: Any) -> pl.Expr:
        return option if isinstance(option, pl.Expr) else pl.lit(option, dtype=pl.Utf8)

    expr = value(options[-1])
    for index, option in reversed(list(enumerate(options[:-1]))):
        expr = pl.when(pl.col("form") % len(options) == index).then(value(option)).otherwise(expr)
    return expr


def _lookup(column: str, values: Sequence[str]) -> pl.Expr:
    mapping = dict(enumerate(values))
    return pl.col(column).replace_strict(mapping, default=None, return_dtype=pl.Utf8)


def _cycle(column: str, values: Sequence[str]) -> pl.Expr:
    """values[column % len(values)]."""
    mapping = dict(enumerate(values))
    return (pl.col(column) % len(values)).replace_strict(mapping, return_dtype=pl.Utf8)


def _padded(text: pl.Expr) -> pl.Expr:
    return pl.concat_str(pl.lit(" "), text, pl.lit(" "))


def _zfill(column: str, width: int) -> pl.Expr:
    return pl.col(column).cast(pl.Utf8).str.zfill(width)


def _pick_bad(
    rng: np.random.Generator,
    rules: Sequence[str],
    money: Bools,
    rate: float,
    at_least_one: bool,
) -> Int64s:
    """Rule number (1-based, 0 = clean) each row is made to break; rows break one rule only."""
    n = len(money)
    bad = np.zeros(n, dtype=np.int64)
    if rate <= 0 or n == 0:
        return bad
    for code, rule in enumerate(rules, start=1):
        allowed = (bad == 0) & (money if rule in _MONEY_RULES else True)
        candidates = np.flatnonzero(allowed)
        count = int(rng.binomial(n, rate / len(rules)))
        count = min(len(candidates), max(count, 1) if at_least_one else count)
        bad[rng.choice(candidates, count, replace=False)] = code
    return bad


def _bad_counts(bad: Int64s, rules: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(bad, minlength=len(rules) + 1)
    return {rule: int(counts[code]) for code, rule in enumerate(rules, start=1)}


_BAD_TIMES = ("not a date", "N/A", "2026-02-30T10:00:00Z", "31/01/2026 10:00", None, "")


def _bad_occurred(context: _Context, rules: Sequence[str], clean: pl.Expr) -> pl.Expr:
    """occurred_at with the two time rules applied: unparseable text (or NULL where the column is
    typed), and more than a day after received_at."""
    unparseable = (
        pl.lit(None, dtype=pl.Utf8) if context.dialect == "postgresql" else _pick(_BAD_TIMES)
    )
    future = _utc_text(pl.col("received_us") + pl.col("future_us"))
    return (
        pl.when(pl.col("bad") == rules.index("bad_occurred_at") + 1)
        .then(unparseable)
        .when(pl.col("bad") == rules.index("future_occurred_at") + 1)
        .then(future)
        .otherwise(clean)
    )


def _finish_rows(
    rng: np.random.Generator, frame: pl.DataFrame, context: _Context, rules: Sequence[str]
) -> pl.DataFrame:
    """Keep the rows received in [start, end), number them, pick the rows that break a rule."""
    frame = frame.filter(
        (pl.col("received_us") >= context.start_us) & (pl.col("received_us") < context.end_us)
    ).sort("received_us", "row")
    n = frame.height
    money = frame["is_money"].to_numpy() if "is_money" in frame.columns else np.zeros(n, bool)
    base = context.profile.number * ID_BLOCK
    return frame.with_columns(
        id=pl.Series(np.arange(base + 1, base + 1 + n, dtype=np.int64)),
        bad=pl.Series(_pick_bad(rng, rules, money, context.bad_rate, context.profile.number == 1)),
        form=pl.Series(rng.integers(0, 720, n)),  # 720: an even choice among 2 to 6 forms
        future_us=pl.Series(rng.integers(DAY + MINUTE, 400 * DAY, n)),
    )


def _finish_business(
    rng: np.random.Generator, parts: pl.DataFrame, context: _Context
) -> tuple[pl.DataFrame, int, dict[str, int]]:
    """Render the events as stored, add re-sent copies, then break `bad_rate` of the rows."""
    rendered = _render_business(rng, parts, context)
    n = rendered.height
    # Emitters retry: the same row again, same idempotency key, received later under a new id.
    resent = rendered.filter(pl.col("resend") & pl.col("idempotency_key").is_not_null())
    resent_lag = np.where(
        rng.random(resent.height) < 0.7,
        rng.integers(US, MINUTE, resent.height),
        rng.integers(MINUTE, 30 * HOUR, resent.height),
    )
    resent = resent.with_columns(
        row=pl.col("row") + n, received_us=pl.col("received_us") + resent_lag
    )
    frame = _finish_rows(rng, pl.concat([rendered, resent]), context, BUSINESS_RULES)
    duplicates = int((frame["row"] >= n).sum())
    frame = _break_business(frame, context)
    bad = _bad_counts(frame["bad"].to_numpy(), BUSINESS_RULES)
    return frame.drop("bad"), duplicates, bad


def _render_business(
    rng: np.random.Generator, parts: pl.DataFrame, context: _Context
) -> pl.DataFrame:
    """The events as the app stores them, in the forms normalization has to absorb (letter
    case, padding, other ISO time forms, NULL keys and payloads), none breaking a rule."""
    n = parts.height
    pid = context.profile.project_id
    customer = parts["customer"].to_numpy()
    frame = parts.with_columns(
        row=pl.int_range(pl.len(), dtype=pl.Int64),
        seq=pl.int_range(pl.len(), dtype=pl.Int64).over("kind"),
        email=context.emails.gather(np.maximum(customer, 0)),
        received_us=pl.col("occurred_us") + _arrival_lags(rng, n),
        offset_s=context.clock.offset_of(parts["occurred_us"].to_numpy()),
        fmt=_time_formats(rng, n),
        variant=rng.integers(0, 1000, n),
        null_key=rng.random(n) < 0.01,
        null_payload=rng.random(n) < 0.03,
        resend=rng.random(n) < _P_DUPLICATE,
    )
    kind = pl.col("kind")
    is_outcome = kind.is_in(list(_OUTCOMES))
    seq = _zfill("seq", 7)
    ref = _zfill("ref", 7)
    run_id = _lookup("ref", context.run_ids)
    event_type = _lookup("kind", _EVENT_TYPES)
    email = pl.col("email")
    email_form = pl.col("email_form")
    actor_email = (
        pl.when(pl.col("customer") < 0)
        .then(pl.lit(None, dtype=pl.Utf8))
        .when(email_form == 1)
        .then(email.str.to_uppercase())
        .when(email_form == 2)
        .then(email.str.to_titlecase())
        .when(email_form == 3)
        .then(_padded(email))
        .when(email_form == 4)
        .then(_cycle("variant", _INVALID_EMAILS))
        .otherwise(email)
    )
    session = pl.concat_str(pl.lit(f"ses_{context.profile.number:04d}_"), _zfill("session", 6))
    session = (
        pl.when(pl.col("other_session") == 1)
        .then(pl.concat_str(session, pl.lit("_b")))
        .otherwise(session)
    )
    currency = _lookup("currency", _CURRENCIES)
    payload = (
        pl.when(kind == CHECKOUT)
        .then(pl.format('{{"cart_id": "cart_{}", "items": {}}}', seq, pl.col("extra")))
        .when((kind == PAID) & (pl.col("ref") >= 0))
        .then(pl.format('{{"checkout": "chk_{}", "provider": "stripe"}}', ref))
        .when(kind == PAID)
        .then(pl.lit('{"provider": "invoice"}'))
        .when(kind == FAILED)
        .then(pl.format('{{"failure_code": "{}"}}', _lookup("extra", _FAILURE_CODES)))
        .when(kind == REFUND)
        .then(
            pl.format(
                '{{"payment": "pay_{}", "reason": "{}"}}', ref, _lookup("extra", _REFUND_REASONS)
            )
        )
        .when(kind == FORM)
        .then(pl.format('{{"form_id": "{}"}}', _lookup("extra", _FORMS)))
        .when(kind == LEAD)
        .then(pl.format('{{"form_id": "{}", "source": "form"}}', _lookup("extra", _FORMS)))
        .otherwise(pl.format('{{"run_id": "{}"}}', run_id))
    )
    key = (
        pl.when(is_outcome)
        .then(pl.concat_str(pl.lit("workflow:"), run_id, pl.lit(":"), email))
        .when(pl.col("null_key"))
        .then(pl.lit(None, dtype=pl.Utf8))
        .otherwise(pl.concat_str(_lookup("kind", _KEY_PREFIX), seq))
    )
    variant = pl.col("variant")
    return frame.select(
        "row",
        "received_us",
        "resend",
        is_money=kind.is_in(list(_MONEY)),
        project_id=pl.when(variant < 1).then(pl.lit(f" {pid} ")).otherwise(pl.lit(pid)),
        event_type=pl.when(variant < 3)
        .then(event_type.str.to_uppercase())
        .when(variant < 6)
        .then(_padded(event_type))
        .otherwise(event_type),
        occurred_at=_occurred_text(context),
        idempotency_key=key,
        actor_email=actor_email,
        session_id=pl.when(pl.col("session") >= 0).then(session),
        amount_cents=pl.when(pl.col("amount") >= 0).then(pl.col("amount")),
        currency=pl.when(variant.is_between(100, 119))
        .then(currency.str.to_lowercase())
        .when(variant.is_between(120, 129))
        .then(_padded(currency))
        .otherwise(currency),
        payload=pl.when(pl.col("null_payload") & ~is_outcome).then(pl.lit(None)).otherwise(payload),
    )


def _break_business(frame: pl.DataFrame, context: _Context) -> pl.DataFrame:
    """Apply each row's `bad` rule in a form the dialect's column can hold."""
    rule = {name: pl.col("bad") == code for code, name in enumerate(BUSINESS_RULES, start=1)}
    amount = pl.col("amount_cents")
    if context.dialect == "sqlite":
        # Bound as text on purpose: SQLite's integer affinity stores "4999" as an integer, while
        # "4999.5" becomes a REAL and "twelve" stays text, both kept as the app would keep them.
        bad_amount = _pick(
            [
                pl.concat_str(pl.lit("-"), amount.cast(pl.Utf8)),
                None,
                pl.concat_str(amount.cast(pl.Utf8), pl.lit(".5")),
                "twelve",
            ]
        )
        amount_out = pl.when(rule["bad_amount"]).then(bad_amount).otherwise(amount.cast(pl.Utf8))
        bad_payloads = ["[1, 2]", "null", '"paid"', "42", '{"run_id": ', "not json"]
    else:
        amount_out = (
            pl.when(rule["bad_amount"])
            .then(pl.when(pl.col("form") % 2 == 0).then(-amount - 1))
            .otherwise(amount)
        )
        bad_payloads = ["[1, 2]", "null", '"paid"', "42"]
    return frame.select(
        "id",
        project_id=pl.when(rule["unknown_project"])
        .then(_pick([None, "", "p0000", "deleted-project"]))
        .otherwise(pl.col("project_id")),
        event_type=pl.when(rule["missing_event_type"])
        .then(_pick([None, "", "  "]))
        .otherwise(pl.col("event_type")),
        occurred_at=_bad_occurred(context, BUSINESS_RULES, pl.col("occurred_at")),
        received_at=_utc_text(pl.col("received_us")),
        idempotency_key="idempotency_key",
        actor_email="actor_email",
        session_id="session_id",
        amount_cents=amount_out,
        currency=pl.when(rule["bad_currency"])
        .then(_pick([None, "US", "EURO", "$", "U$D"]))
        .otherwise(pl.col("currency")),
        payload=pl.when(rule["bad_payload"]).then(_pick(bad_payloads)).otherwise(pl.col("payload")),
        bad="bad",
    )


def _finish_analytics(
    rng: np.random.Generator, events: pl.DataFrame, context: _Context
) -> tuple[pl.DataFrame, dict[str, int]]:
    n = events.height
    number = f"{context.profile.number:04d}"
    pid = context.profile.project_id
    frame = events.with_columns(
        row=pl.int_range(pl.len(), dtype=pl.Int64),
        received_us=pl.col("occurred_us") + _arrival_lags(rng, n),
        offset_s=context.clock.offset_of(events["occurred_us"].to_numpy()),
        fmt=_time_formats(rng, n),
        variant=rng.integers(0, 1000, n),
    )
    name = _lookup("name_code", _EVENT_NAMES)
    variant = pl.col("variant")
    rendered = frame.select(
        "row",
        "received_us",
        project_id=pl.when(variant < 1).then(pl.lit(f" {pid} ")).otherwise(pl.lit(pid)),
        event_name=pl.when(variant < 3)
        .then(name.str.to_uppercase())
        .when(variant < 5)
        .then(_padded(name))
        .otherwise(name),
        session_id=pl.concat_str(pl.lit(f"ses_{number}_"), _zfill("session", 6)),
        anonymous_id=pl.when(~pl.col("no_visitor")).then(
            pl.concat_str(pl.lit(f"anon_{number}_"), _zfill("visitor", 6))
        ),
        path=_lookup("path_code", _PATHS),
        occurred_at=_occurred_text(context),
    )
    frame = _finish_rows(rng, rendered, context, ANALYTICS_RULES)
    rule = {name: pl.col("bad") == code for code, name in enumerate(ANALYTICS_RULES, start=1)}
    frame = frame.select(
        "id",
        project_id=pl.when(rule["unknown_project"])
        .then(_pick([None, "", "p0000", "deleted-project"]))
        .otherwise(pl.col("project_id")),
        event_name="event_name",
        session_id=pl.when(rule["missing_session"])
        .then(_pick([None, "", " "]))
        .otherwise(pl.col("session_id")),
        anonymous_id="anonymous_id",
        path="path",
        occurred_at=_bad_occurred(context, ANALYTICS_RULES, pl.col("occurred_at")),
        received_at=_utc_text(pl.col("received_us")),
        bad="bad",
    )
    bad = _bad_counts(frame["bad"].to_numpy(), ANALYTICS_RULES)
    return frame.drop("bad"), bad


# --- e-mails and suppressions ---------------------------------------------------------------


def _locale_variant(rng: np.random.Generator, locale: str) -> str | None:
    """The locale tag as the app stored it on an e-mail, in the forms seen in the wild."""
    u = rng.random()
    if u < 0.8:
        return locale
    if u < 0.88:
        return locale.replace("-", "_").lower()
    return None if u < 0.94 else "en"


def _subject(locale: str | None, day: date) -> str:
    language = (locale or "en").lower().replace("_", "-").split("-")[0]
    return _DIGEST_SUBJECTS.get(language, _DIGEST_SUBJECTS["en"]).format(day=day.isoformat())


def _emails_frame(
    rng: np.random.Generator, profile: _Profile, start_us: int, end_us: int
) -> pl.DataFrame:
    """The digests already sent (mostly delivered, some failed, bounced or stuck queued) and a few
    notification e-mails."""
    pid = profile.project_id
    rows: list[dict[str, Any]] = []
    for reported, at in profile.digests:
        created = at + int(rng.integers(0, 120 * US))
        u = rng.random()
        status = (
            "sent" if u < 0.9 else "failed" if u < 0.94 else "bounced" if u < 0.97 else "queued"
        )
        locale = _locale_variant(rng, profile.persona.locale)
        rows.append(
            {
                "project_id": pid,
                "template_name": "daily_digest",
                "locale": locale,
                "to_email": profile.owner_email,
                "subject": _subject(locale, reported),
                "status": status,
                "idempotency_key": f"digest:{pid}:{reported.isoformat()}",
                "created_us": created,
                "sent_us": created + int(rng.integers(US, 30 * US))
                if status in ("sent", "bounced")
                else None,
                "error": _EMAIL_ERRORS.get(status),
            }
        )
    if profile.owner_email is not None:
        first = max(start_us, profile.created_us)
        count = int(rng.poisson((end_us - first) / DAY / 4))
        for index, created in enumerate(sorted(rng.integers(first, end_us, count).tolist())):
            rows.append(
                {
                    "project_id": pid,
                    "template_name": "notification",
                    "locale": profile.persona.locale,
                    "to_email": profile.owner_email,
                    "subject": "New order received",
                    "status": "sent",
                    "idempotency_key": f"notification:{pid}:{index}",
                    "created_us": created,
                    "sent_us": created + US,
                    "error": None,
                }
            )
    rows.sort(key=lambda row: (row["created_us"], row["idempotency_key"]))
    base = profile.number * ID_BLOCK
    return pl.DataFrame(
        [
            {
                "id": base + index,
                **{k: v for k, v in row.items() if not k.endswith("_us")},
                "created_at": _iso(row["created_us"]),
                "sent_at": _iso(row["sent_us"]),
            }
            for index, row in enumerate(rows, start=1)
        ],
        schema=_EMAIL_SCHEMA,
    )


_EMAIL_ERRORS = {
    "failed": "smtp: 451 temporary failure",
    "bounced": "550 5.1.1 mailbox unavailable",
}
_EMAIL_SCHEMA = {
    "id": pl.Int64,
    "project_id": pl.Utf8,
    "template_name": pl.Utf8,
    "locale": pl.Utf8,
    "to_email": pl.Utf8,
    "subject": pl.Utf8,
    "status": pl.Utf8,
    "idempotency_key": pl.Utf8,
    "error": pl.Utf8,
    "created_at": pl.Utf8,
    "sent_at": pl.Utf8,
}


def _suppressions_frame(
    rng: np.random.Generator, profile: _Profile, emails: pl.Series, start_us: int, end_us: int
) -> pl.DataFrame:
    count = min(len(emails), 50, max(1, round(len(emails) * 0.01)))  # 0 without customers
    who = np.sort(rng.choice(len(emails), count, replace=False))
    reasons = rng.choice(["unsubscribed", "bounced", "complained"], count, p=[0.6, 0.3, 0.1])
    created = np.sort(rng.integers(start_us, end_us, count))
    return pl.DataFrame(
        {
            "project_id": profile.project_id,
            "email": emails.gather(who),
            "reason": reasons.tolist(),
            "created_at": [_iso(int(t)) for t in created],
        },
        schema={"project_id": pl.Utf8, "email": pl.Utf8, "reason": pl.Utf8, "created_at": pl.Utf8},
    )


# --- loading --------------------------------------------------------------------------------

_EVENT_TABLES = ("business_events", "inhouse_analytics_events", "inhouse_emails")
_PROJECT_TABLES = ("workflow_runs", "workflow_sends", "inhouse_email_suppressions", "projects")


def _delete_previous(connection: Connection, projects: int) -> None:
    """Remove what an earlier run with up to `projects` projects wrote (see the module doc)."""
    ids = [project_id(number) for number in range(1, projects + 1)]
    first_id, last_id = ID_BLOCK, (projects + 1) * ID_BLOCK - 1
    for name in _EVENT_TABLES:
        table = sa.table(name, sa.column("id"), sa.column("project_id"))
        in_range = table.c.id.between(first_id, last_id)
        connection.execute(sa.delete(table).where(sa.or_(table.c.project_id.in_(ids), in_range)))
    for name in _PROJECT_TABLES:
        table = sa.table(name, sa.column("project_id"))
        connection.execute(sa.delete(table).where(table.c.project_id.in_(ids)))


def _bump_identities(connection: Connection) -> None:
    """Move PostgreSQL's identity sequences past the explicit ids, so app inserts still work."""
    for name in _EVENT_TABLES:
        table = sa.table(name, sa.column("id"))
        highest = connection.execute(sa.select(sa.func.max(table.c.id))).scalar()
        if highest is not None:
            connection.execute(
                sa.text("select setval(pg_get_serial_sequence(:name, 'id'), :value)"),
                {"name": name, "value": highest},
            )


class _Loader:
    """Bulk insert inside the caller's transaction: executemany on SQLite, CSV COPY on
    PostgreSQL (text times and JSON are parsed by the server into the typed columns)."""

    def __init__(self, connection: Connection, dialect: Dialect) -> None:
        self.connection = connection
        self.dialect = dialect

    def load(self, name: str, frame: pl.DataFrame) -> None:
        if frame.is_empty():
            return
        raw: Any = self.connection.connection.driver_connection
        if self.dialect == "sqlite":
            table = sa.table(name, *(sa.column(column) for column in frame.columns))
            insert = str(sa.insert(table).compile(dialect=sqlite_dialect.dialect()))
            raw.executemany(insert, frame.iter_rows())
            return
        copy = pg_sql.SQL("copy {} ({}) from stdin (format csv)").format(
            pg_sql.Identifier(name), pg_sql.SQL(", ").join(map(pg_sql.Identifier, frame.columns))
        )
        with raw.cursor() as cursor, cursor.copy(copy) as stream:
            for chunk in frame.iter_slices(COPY_ROWS):
                stream.write(chunk.write_csv(include_header=False))
