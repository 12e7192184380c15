"""Checks of the staging layer and its per-window ledger (CONTRACT §4).

Window-level checks look at the run's windows plus every ledger row the run rewrote (re-staging a
window can move the duplicate counts of other windows), so a range run is checked over its range.
"""

from datetime import UTC, datetime, timedelta

from runhub_pipeline.checks.core import (
    CheckEnv,
    Outcome,
    Severity,
    fetch,
    markdown_table,
    no_offenders,
    render,
)
from runhub_pipeline.settings import WINDOW, floor_to_window

MONEY_TYPES = ("payment_succeeded", "payment_failed", "refund_issued")
SOURCE_TABLES = ("business_events", "inhouse_analytics_events")
# Freshness metadata: until when a passing verdict holds (the freshness schedule reads it).
FRESH_UNTIL = "fresh_until"

# Ledger rows whose source rows this run read: its windows, and windows it re-ingested.
INGESTED_SCOPE = """(
    (l.window_start >= $window_start and l.window_start < $window_end)
    or l.ingested_at >= $run_started_at
)"""
# Ledger rows this run is answerable for: those it read, and those whose duplicate counts it
# re-staged (a copy of one of its keys was staged in that window).
LEDGER_SCOPE = f"({INGESTED_SCOPE} or l.staged_at >= $run_started_at)"

_DEDUPE = """
select s.project_id, s.idempotency_key, count(*) as copies, min(s.event_id) as first_event_id
from stg_business_events as s
where s.idempotency_key is not null
group by s.project_id, s.idempotency_key
having count(*) > 1
"""

_BAD_MONEY = """
select s.event_id, s.project_id, s.event_type, s.amount_cents, s.currency
from stg_business_events as s
where s.event_type in ({% for t in money_types %}'{{ t }}'{{ ", " if not loop.last }}{% endfor %})
    and (
        s.amount_cents is null or s.amount_cents < 0
        or not coalesce(regexp_full_match(s.currency, '[A-Z]{3}'), false)
    )
"""

_UNBALANCED = """
with ledger as (
    select l.* from ingest_ledger as l where {{ scope }}
),
staged as (
    select 'business_events' as source_table, s.ingest_window_start as window_start,
        count(*) as rows_staged
    from stg_business_events as s
    where s.ingest_window_start in (select window_start from ledger)
    group by s.ingest_window_start
    union all
    select 'inhouse_analytics_events' as source_table, a.ingest_window_start as window_start,
        count(*) as rows_staged
    from stg_analytics_events as a
    where a.ingest_window_start in (select window_start from ledger)
    group by a.ingest_window_start
),
quarantined as (
    select q.source_table, q.ingest_window_start as window_start, count(*) as rows_quarantined
    from quarantined_events as q
    where q.ingest_window_start in (select window_start from ledger)
    group by q.source_table, q.ingest_window_start
)
select
    l.source_table, l.window_start, l.source_rows, l.staged, l.duplicates, l.quarantined,
    coalesce(s.rows_staged, 0) as staged_table_rows,
    coalesce(q.rows_quarantined, 0) as quarantined_table_rows
from ledger as l
left join staged as s on s.source_table = l.source_table and s.window_start = l.window_start
left join quarantined as q on q.source_table = l.source_table and q.window_start = l.window_start
where l.source_rows <> l.staged + l.duplicates + l.quarantined
    or l.staged <> coalesce(s.rows_staged, 0)
    or l.quarantined <> coalesce(q.rows_quarantined, 0)
order by l.window_start, l.source_table
"""

_QUARANTINE_SHARE = """
select
    l.source_table, l.window_start, l.source_rows, l.quarantined,
    round(l.quarantined / l.source_rows, 4) as share
from ingest_ledger as l
where {{ scope }}
    and l.source_rows >= $min_rows
    and l.quarantined > l.source_rows * $warn_share
order by share desc, l.window_start
"""

_WATERMARKS = """
select l.source_table, max(l.window_start) + interval 15 minute as watermark
from ingest_ledger as l
group by l.source_table
order by l.source_table
"""

_LATENCY = """
select
    count(*) as ledger_rows,
    max(l.ingested_at - (l.window_start + interval 15 minute)) as max_latency,
    count(*) filter (
        where l.ingested_at > l.window_start + interval 15 minute + $allowed
    ) as ingested_after_deadline
from ingest_ledger as l
where l.window_start >= $window_start and l.window_start < $window_end
"""

_VOLUME = """
with current_windows as (
    select l.source_table, l.window_start, l.source_rows
    from ingest_ledger as l
    where l.window_start >= $window_start and l.window_start < $window_end
        and isodow(l.window_start) < 6
),
compared as (
    select
        c.source_table, c.window_start, c.source_rows,
        median(h.source_rows) as baseline,
        count(h.source_rows) as weeks
    from current_windows as c
    join ingest_ledger as h
        on h.source_table = c.source_table
        and h.window_start < c.window_start
        and h.window_start >= c.window_start - to_days(7 * $weeks)
        and date_diff('minute', h.window_start, c.window_start) % 10080 = 0
    group by c.source_table, c.window_start, c.source_rows
)
select
    m.source_table, m.window_start, m.source_rows, m.baseline, m.weeks,
    round(m.source_rows / nullif(m.baseline, 0), 2) as ratio
from compared as m
where m.weeks >= $min_weeks
    and greatest(m.baseline, m.source_rows) >= $min_rows
    and (m.source_rows < m.baseline * $low_ratio or m.source_rows > m.baseline * $high_ratio)
order by m.window_start, m.source_table
"""

_INVALID_TIMEZONES = """
select p.project_id, p.timezone_raw, p.timezone as used_timezone
from stg_projects as p
where not p.is_timezone_valid
order by p.project_id
"""


def dedupe_key_unique(env: CheckEnv) -> Outcome:
    """At most one staged business event per (project_id, idempotency_key)."""
    return no_offenders(
        env,
        _DEDUPE,
        failed=lambda count: f"{count} idempotency keys staged more than once",
        passed="every idempotency key staged once",
    )


def money_amounts_valid(env: CheckEnv) -> Outcome:
    """Staged money events carry an amount >= 0 and a three-letter currency."""
    return no_offenders(
        env,
        render(_BAD_MONEY, money_types=MONEY_TYPES),
        failed=lambda count: f"{count} staged money events with a bad amount or currency",
        passed="money events have amounts >= 0 and ISO currencies",
    )


def ledger_balances(env: CheckEnv) -> Outcome:
    """source_rows = staged + duplicates + quarantined, and the counts match the tables."""
    scope = env.scope.describe()
    return no_offenders(
        env,
        render(_UNBALANCED, scope=LEDGER_SCOPE),
        params=env.scope.params(),
        failed=lambda count: f"{count} ledger rows do not balance ({scope})",
        passed=f"every ledger row balances ({scope})",
        metadata={"scope": scope},
    )


def quarantine_share(env: CheckEnv) -> Outcome:
    """Share of quarantined rows per window with enough rows: WARN above 1 %, ERROR above 5 %."""
    limits = env.thresholds
    params = {
        **env.scope.params(),
        "min_rows": limits.quarantine_min_rows,
        "warn_share": limits.quarantine_warn_share,
    }
    columns, rows = fetch(env.connection, render(_QUARANTINE_SHARE, scope=LEDGER_SCOPE), params)
    worst = max((float(row[4]) for row in rows), default=0.0)
    errors = sum(1 for row in rows if row[3] > row[2] * limits.quarantine_error_share)
    metadata = {
        "scope": env.scope.describe(),
        "windows_over_warn": len(rows),
        "windows_over_error": errors,
        "max_share": worst,
        "sample": markdown_table(columns, rows[: limits.sample_rows]),
    }
    if not rows:
        return Outcome(
            True,
            f"quarantine share <= {limits.quarantine_warn_share:.0%} in every window with"
            f" >= {limits.quarantine_min_rows} source rows",
            metadata=metadata,
        )
    severity: Severity = "ERROR" if errors else "WARN"
    limit = limits.quarantine_error_share if errors else limits.quarantine_warn_share
    return Outcome(
        False,
        f"{errors if errors else len(rows)} windows quarantined more than {limit:.0%}"
        f" (max {worst:.1%})",
        severity=severity,
        metadata=metadata,
    )


def freshness(env: CheckEnv) -> Outcome:
    """The newest window that is due (its end + ingest lag + 15 min has passed) is ingested.

    Judged on the ledger's windows, not on when the asset last ran: a backfill of old windows
    moves no watermark, so it cannot make stale data look fresh. A pass holds until the next
    window falls due (`fresh_until`, in the metadata).
    """
    allowed = env.options.ingest_lag + env.thresholds.freshness_slack
    due_end = floor_to_window(env.scope.now - allowed)
    _, rows = fetch(env.connection, _WATERMARKS)
    watermarks: dict[str, datetime] = {str(r[0]): r[1].astimezone(UTC) for r in rows}
    _, latency = fetch(env.connection, _LATENCY, {**env.scope.params(), "allowed": allowed})
    windows, max_latency, late = latency[0] if latency else (0, None, 0)
    metadata = {
        "now": env.scope.now.isoformat(),
        "due_window_end": due_end.isoformat(),
        "allowed_delay_minutes": allowed.total_seconds() / 60,
        "watermarks": markdown_table(
            ["source_table", "watermark"], [(t, w) for t, w in watermarks.items()]
        ),
        "ledger_rows_of_run": int(windows or 0),
        "ledger_rows_ingested_after_deadline": int(late or 0),
        "max_ingest_delay_minutes": _minutes(max_latency),
    }
    stale = [
        t for t in SOURCE_TABLES if watermarks.get(t, datetime.min.replace(tzinfo=UTC)) < due_end
    ]
    if not stale:
        fresh_until = min(watermarks[t] for t in SOURCE_TABLES) + WINDOW + allowed
        return Outcome(
            True,
            f"ingested through {due_end:%Y-%m-%d %H:%M} UTC",
            metadata={**metadata, FRESH_UNTIL: fresh_until},
        )
    behind = min((watermarks[t] for t in stale if t in watermarks), default=None)
    lag = f"{_minutes(due_end - behind):.0f} min behind" if behind else "never ingested"
    return Outcome(
        False,
        f"{', '.join(stale)} not ingested through {due_end:%Y-%m-%d %H:%M} UTC ({lag})",
        severity="WARN",
        metadata=metadata,
    )


def _minutes(value: timedelta | None) -> float:
    return round(value.total_seconds() / 60, 1) if value is not None else 0.0


def volume_anomaly(env: CheckEnv) -> Outcome:
    """Source rows per window against the median of the same window in earlier weeks."""
    limits = env.thresholds
    params = {
        **env.scope.params(),
        "weeks": limits.volume_weeks,
        "min_weeks": limits.volume_min_weeks,
        "min_rows": limits.volume_min_rows,
        "low_ratio": limits.volume_low_ratio,
        "high_ratio": limits.volume_high_ratio,
    }
    columns, rows = fetch(env.connection, _VOLUME, params)
    metadata = {
        "scope": env.scope.describe(),
        "anomalous_windows": len(rows),
        "rule": f"outside {limits.volume_low_ratio}x..{limits.volume_high_ratio}x of the median"
        f" of the same window 1-{limits.volume_weeks} weeks earlier; weekdays (UTC) with"
        f" >= {limits.volume_min_rows} rows only",
        "sample": markdown_table(columns, rows[: limits.sample_rows]),
    }
    if not rows:
        return Outcome(True, "no volume anomaly", severity="WARN", metadata=metadata)
    return Outcome(
        False,
        f"{len(rows)} windows with unusual source volume",
        severity="WARN",
        metadata=metadata,
    )


def invalid_timezones(env: CheckEnv) -> Outcome:
    """Projects whose time zone is not a valid zone name (their days fall back to UTC)."""
    return no_offenders(
        env,
        _INVALID_TIMEZONES,
        failed=lambda count: f"{count} projects with an invalid time zone, reported in UTC",
        passed="every project time zone is valid",
        severity="WARN",
    )
