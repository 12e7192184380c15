"""Analytics events: sessions of page views and clicks, following each zone's daily rhythm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from runhub_pipeline.simulate.behaviour import EVENTS_PER_SESSION, P_CHECKOUT, P_CLICK, PAGE_STOP
from runhub_pipeline.simulate.clock import DAY, HOUR, MINUTE, QUARTER, US, Clock
from runhub_pipeline.simulate.projects import Profile
from runhub_pipeline.simulate.quarantine import bad_counts, break_analytics, finish_rows
from runhub_pipeline.simulate.render import (
    Context,
    arrival_lags,
    lookup,
    occurred_text,
    stored_name,
    stored_project_id,
    time_formats,
    zfill,
)
from runhub_pipeline.simulate.spec import ANALYTICS_RULES, Bools, Int64s, SimulationSpec

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


@dataclass(frozen=True)
class Sessions:
    start: Int64s
    duration: Int64s
    visitor: Int64s
    checkout: Bools


def segment_offsets(gaps: Int64s, counts: Int64s) -> Int64s:
    """Running sums of `gaps` that restart at each segment of `counts` rows."""
    counts = counts[counts > 0]
    if len(gaps) == 0:
        return gaps
    total = np.cumsum(gaps)
    firsts = np.cumsum(counts) - counts
    return total - np.repeat(total[firsts] - gaps[firsts], counts)


def analytics_events(
    rng: np.random.Generator, spec: SimulationSpec, profile: Profile, clock: Clock
) -> tuple[pl.DataFrame, Sessions]:
    """Sessions (session_start, page views, a few clicks) following local-time daily rhythm."""
    bins = clock.bins
    local = bins + clock.offsets * US
    weekday = (local // DAY + 3) % 7  # 1970-01-01 was a Thursday
    weights = _HOURLY[(local // HOUR) % 24] * np.where(weekday >= 5, _WEEKEND, 1.0)
    active = (bins >= profile.active_start_us) & (bins < profile.active_end_us)
    weights = np.where(active, weights, 0.0)
    active_days = int(active.sum()) / 96
    mean = spec.events_per_day * profile.size * active_days / EVENTS_PER_SESSION
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

    page_views = np.where(is_midnight, 4, np.minimum(rng.geometric(PAGE_STOP, n), 40))
    clicks = (rng.random(n) < P_CLICK).astype(np.int64)
    visitor = rng.integers(0, max(1, int(n * 0.55)), n)
    checkout = rng.random(n) < P_CHECKOUT
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
    offsets = segment_offsets(np.where(position == 0, 0, gaps), counts)
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
    return frame, Sessions(start, offsets[last_row], visitor, checkout)


def finish_analytics(
    rng: np.random.Generator, events: pl.DataFrame, context: Context
) -> tuple[pl.DataFrame, dict[str, int]]:
    n = events.height
    number = f"{context.profile.number:04d}"
    pid = context.profile.project_id
    frame = events.with_columns(
        row=pl.int_range(pl.len(), dtype=pl.Int64),
        received_us=pl.col("occurred_us") + arrival_lags(rng, n),
        offset_s=context.clock.offset_of(events["occurred_us"].to_numpy()),
        fmt=time_formats(rng, n),
        variant=rng.integers(0, 1000, n),
    )
    name = lookup("name_code", _EVENT_NAMES)
    rendered = frame.select(
        "row",
        "received_us",
        project_id=stored_project_id(pid),
        event_name=stored_name(name, padded_below=5),
        session_id=pl.concat_str(pl.lit(f"ses_{number}_"), zfill("session", 6)),
        anonymous_id=pl.when(~pl.col("no_visitor")).then(
            pl.concat_str(pl.lit(f"anon_{number}_"), zfill("visitor", 6))
        ),
        path=lookup("path_code", _PATHS),
        occurred_at=occurred_text(context),
    )
    frame = finish_rows(rng, rendered, context, ANALYTICS_RULES)
    frame = break_analytics(frame, context)
    bad = bad_counts(frame["bad"].to_numpy(), ANALYTICS_RULES)
    return frame.drop("bad"), bad
