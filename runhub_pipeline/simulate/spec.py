"""What `runhub simulate` is asked for and what it reports, and the limits of a spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import numpy.typing as npt

from runhub_pipeline.settings import SettingsError, is_window_start

Int64s = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

ID_BLOCK = 1_000_000_000
MAX_PROJECTS = 9_999

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


def project_id(number: int) -> str:
    return f"p{number:04d}"


def validate(spec: SimulationSpec) -> None:
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
    if spec.end.tzinfo is None or not is_window_start(spec.end):
        raise SimulationError(f"--end must be an aware time on a 15-minute boundary: {spec.end}")
