"""`simulate`: every project in one transaction, reporting progress a line per project."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from runhub_pipeline.resources.app_db import AppDatabase, Dialect
from runhub_pipeline.simulate.analytics import analytics_events, finish_analytics
from runhub_pipeline.simulate.business import business_events
from runhub_pipeline.simulate.business_rows import finish_business
from runhub_pipeline.simulate.clock import DAY, project_clock, to_us
from runhub_pipeline.simulate.emails import emails_frame, suppressions_frame
from runhub_pipeline.simulate.loading import Loader, bump_identities, delete_previous
from runhub_pipeline.simulate.projects import Profile, customer_emails, draw_profile, projects_frame
from runhub_pipeline.simulate.render import Context
from runhub_pipeline.simulate.spec import (
    ANALYTICS_RULES,
    BUSINESS_RULES,
    SimulationResult,
    SimulationSpec,
    project_id,
    validate,
)
from runhub_pipeline.simulate.workflows import draw_runs, runs_frame


def simulate(
    app_db: AppDatabase,
    spec: SimulationSpec,
    progress: Callable[[str], None] | None = None,
) -> SimulationResult:
    """Replace projects `p0001..pNNNN` and their rows with the data `spec` describes.

    One transaction: a failure leaves the database as it was. `progress` gets a line per project.
    """
    validate(spec)
    report = progress or (lambda _message: None)
    end_us = to_us(spec.end)
    start_us = end_us - spec.days * DAY
    profiles = [
        draw_profile(spec, number, start_us, end_us) for number in range(1, spec.projects + 1)
    ]
    totals = _Totals()
    with app_db.begin() as connection:
        report(f"removing earlier rows of {project_id(1)}..{project_id(spec.projects)}")
        delete_previous(connection, spec.projects)
        loader = Loader(connection, app_db.dialect)
        loader.load("projects", projects_frame(profiles))
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
            bump_identities(connection)
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


def _generate_project(
    rng: np.random.Generator,
    spec: SimulationSpec,
    profile: Profile,
    start_us: int,
    end_us: int,
    dialect: Dialect,
) -> _Batch:
    clock = project_clock(profile.persona.timezone, start_us, end_us)
    analytics, sessions = analytics_events(rng, spec, profile, clock)
    # Customers are the visitors: nobody is mailed or suppressed who never came by.
    n_customers = int(sessions.visitor.max()) + 1 if len(sessions.visitor) else 0
    emails = customer_emails(max(n_customers, 1), profile.number)
    runs = draw_runs(rng, profile, start_us, end_us)
    parts = business_events(rng, profile, sessions, runs, n_customers)
    context = Context(
        profile,
        clock,
        emails,
        tuple(run.run_id for run in runs),
        start_us,
        end_us,
        spec.bad_rate,
        dialect,
    )
    business, duplicates, bad_business = finish_business(rng, parts.frame(), context)
    analytics_frame, bad_analytics = finish_analytics(rng, analytics, context)
    return _Batch(
        business=business,
        analytics=analytics_frame,
        runs=runs_frame(profile, runs),
        emails=emails_frame(rng, profile, start_us, end_us),
        suppressions=suppressions_frame(rng, profile, emails[:n_customers], start_us, end_us),
        duplicates=duplicates,
        bad_business=bad_business,
        bad_analytics=bad_analytics,
    )
