"""Checks of the marts' definitions (CONTRACT §5): arithmetic, statuses and KPI totals against
the staged events behind them.
"""

from runhub_pipeline.checks.core import CheckEnv, Outcome, no_offenders, render

OUTCOME_TYPES = ("recovery_email_sent", "promo_email_sent", "onboarding_email_sent")

_NET_REVENUE = """
select k.project_id, k.day, k.revenue_cents, k.refunded_cents, k.net_revenue_cents
from business_kpi_daily as k
where k.net_revenue_cents is distinct from k.revenue_cents - k.refunded_cents
"""

_CONVERSION_RATE = """
select k.project_id, k.day, k.sessions, k.orders, k.conversion_rate
from business_kpi_daily as k
where (k.sessions = 0 and k.conversion_rate is not null)
    or (k.sessions > 0 and (
        k.conversion_rate is null
        or abs(k.conversion_rate - k.orders::double / k.sessions) > 1e-9
    ))
"""

_CHECKOUT_STATUS = """
select
    c.checkout_event_id, c.project_id, c.status, c.started_at, c.paid_at,
    c.credited_revenue_cents, c.recovered_by_run_id
from fct_checkouts as c
where c.status not in ('converted', 'recovered', 'pending', 'abandoned')
    or c.paid_at < c.started_at
    or (c.status = 'converted'
        and (c.paid_at is null or c.paid_at > c.started_at + interval 30 minute))
    or (c.status = 'recovered'
        and (c.paid_at is null
            or c.paid_at <= c.started_at + interval 30 minute
            or c.paid_at > c.started_at + interval 48 hour))
    or (c.status in ('pending', 'abandoned')
        and c.paid_at is not null and c.paid_at <= c.started_at + interval 48 hour)
    or (c.status <> 'recovered'
        and (c.credited_revenue_cents <> 0 or c.recovered_by_run_id is not null))
"""

# The KPI columns that follow from staged events alone, with how to count them per local day.
_BUSINESS_COUNTS = {
    "form_submissions": "count(*) filter (where b.event_type = 'form_submitted')",
    "leads": "count(*) filter (where b.event_type = 'lead_created')",
    "checkouts_started": "count(*) filter (where b.event_type = 'checkout_started')",
    "payments_failed": "count(*) filter (where b.event_type = 'payment_failed')",
    "orders": "count(*) filter (where b.event_type = 'payment_succeeded')",
    "revenue_cents": "coalesce(sum(b.amount_cents) filter ("
    "where b.event_type = 'payment_succeeded' and b.in_project_currency), 0)",
    "refunds": "count(*) filter (where b.event_type = 'refund_issued')",
    "refunded_cents": "coalesce(sum(b.amount_cents) filter ("
    "where b.event_type = 'refund_issued' and b.in_project_currency), 0)",
    "workflow_emails_sent": "count(*) filter (where b.event_type in ("
    + ", ".join(f"'{t}'" for t in OUTCOME_TYPES)
    + "))",
}
_ANALYTICS_COUNTS = {
    "sessions": "count(distinct a.session_id)",
    "visitors": "count(distinct a.anonymous_id)",
    "page_views": "count(*) filter (where a.event_name = 'page_view')",
}

# The (project, local day) pairs this run recomputed: KPI rows it wrote, and the local days of
# the events staged in its windows (a day whose row should have been deleted is among them).
_KPI_RECONCILIATION = """
with touched as (
    select k.project_id, k.day
    from business_kpi_daily as k
    where k.updated_at >= $run_started_at
    union
    select e.project_id, cast(timezone(p.timezone, e.occurred_at) as date) as day
    from stg_business_events as e
    join stg_projects as p on p.project_id = e.project_id
    where e.ingest_window_start >= $window_start and e.ingest_window_start < $window_end
    union
    select e.project_id, cast(timezone(p.timezone, e.occurred_at) as date) as day
    from stg_analytics_events as e
    join stg_projects as p on p.project_id = e.project_id
    where e.ingest_window_start >= $window_start and e.ingest_window_start < $window_end
),
bounds as (
    select min(t.day) - interval 2 day as low, max(t.day) + interval 3 day as high
    from touched as t
),
business as (
    select
        e.project_id,
        cast(timezone(p.timezone, e.occurred_at) as date) as day,
        e.event_type,
        e.amount_cents,
        coalesce(e.currency = p.currency, false) as in_project_currency
    from stg_business_events as e
    join stg_projects as p on p.project_id = e.project_id
    where e.occurred_at >= (select low from bounds) and e.occurred_at < (select high from bounds)
),
analytics as (
    select
        e.project_id,
        cast(timezone(p.timezone, e.occurred_at) as date) as day,
        e.session_id,
        e.anonymous_id,
        e.event_name
    from stg_analytics_events as e
    join stg_projects as p on p.project_id = e.project_id
    where e.occurred_at >= (select low from bounds) and e.occurred_at < (select high from bounds)
),
{%- for source, alias, counts in (("business", "b", business), ("analytics", "a", analytics)) %}
{{ source }}_days as (
    select
        {{ alias }}.project_id,
        {{ alias }}.day,
{%- for column, expression in counts.items() %}
        {{ expression }} as {{ column }},
{%- endfor %}
        count(*) as events
    from {{ source }} as {{ alias }}
    join touched as t on t.project_id = {{ alias }}.project_id and t.day = {{ alias }}.day
    group by {{ alias }}.project_id, {{ alias }}.day
),
{%- endfor %}
expected as (
    select
        t.project_id,
        t.day,
        coalesce(b.events, 0) + coalesce(a.events, 0) as staged_events,
{%- for column in business %}
        coalesce(b.{{ column }}, 0) as {{ column }},
{%- endfor %}
{%- for column in analytics %}
        coalesce(a.{{ column }}, 0) as {{ column }}{{ "," if not loop.last }}
{%- endfor %}
    from touched as t
    left join business_days as b on b.project_id = t.project_id and b.day = t.day
    left join analytics_days as a on a.project_id = t.project_id and a.day = t.day
)
select
    x.project_id,
    x.day,
    x.staged_events,
    k.project_id is not null as kpi_row_exists,
    concat_ws(', '
{%- for column in columns %},
        case when k.project_id is not null and k.{{ column }} is distinct from x.{{ column }}
            then '{{ column }} ' || coalesce(k.{{ column }}::varchar, 'NULL')
                || ' (staged: ' || x.{{ column }}::varchar || ')'
        end
{%- endfor %}
    ) as differences
from expected as x
left join business_kpi_daily as k on k.project_id = x.project_id and k.day = x.day
where (x.staged_events > 0) <> (k.project_id is not null)
{%- for column in columns %}
    or (k.project_id is not null and k.{{ column }} is distinct from x.{{ column }})
{%- endfor %}
order by x.project_id, x.day
"""

_FOREIGN_CURRENCY = """
select
    e.project_id, p.currency as project_currency, e.currency, e.event_type,
    count(*) as events, sum(e.amount_cents) as amount_cents
from stg_business_events as e
join stg_projects as p on p.project_id = e.project_id
where e.ingest_window_start >= $window_start and e.ingest_window_start < $window_end
    and e.event_type in ('payment_succeeded', 'refund_issued')
    and e.currency is distinct from p.currency
group by e.project_id, p.currency, e.currency, e.event_type
order by events desc, e.project_id
"""


def net_revenue(env: CheckEnv) -> Outcome:
    return no_offenders(
        env,
        _NET_REVENUE,
        failed=lambda count: f"{count} days where net_revenue_cents <> revenue - refunded",
        passed="net_revenue_cents = revenue_cents - refunded_cents on every day",
    )


def conversion_rate(env: CheckEnv) -> Outcome:
    return no_offenders(
        env,
        _CONVERSION_RATE,
        failed=lambda count: (
            f"{count} days where conversion_rate is not orders / sessions"
            " (NULL exactly when sessions = 0)"
        ),
        passed="conversion_rate = orders / sessions, NULL exactly when sessions = 0",
    )


def checkout_status(env: CheckEnv) -> Outcome:
    """Status agrees with paid_at - started_at; only recovered checkouts carry credit or a run."""
    return no_offenders(
        env,
        _CHECKOUT_STATUS,
        failed=lambda count: f"{count} checkouts whose status contradicts their payment",
        passed="every checkout status agrees with its payment",
    )


def kpi_reconciliation(env: CheckEnv) -> Outcome:
    """KPI totals of the days this run recomputed equal a recount of the staged events."""
    sql = render(
        _KPI_RECONCILIATION,
        business=_BUSINESS_COUNTS,
        analytics=_ANALYTICS_COUNTS,
        columns=[*_BUSINESS_COUNTS, *_ANALYTICS_COUNTS],
    )
    return no_offenders(
        env,
        sql,
        params=env.scope.params(),
        failed=lambda count: f"{count} recomputed days disagree with their staged events",
        passed=f"KPI totals match the staged events ({env.scope.describe()})",
        metadata={"scope": env.scope.describe()},
    )


def foreign_currency_revenue(env: CheckEnv) -> Outcome:
    """Money in another currency than the project's: left out of the KPI revenue (WARN)."""
    return no_offenders(
        env,
        _FOREIGN_CURRENCY,
        params=env.scope.params(),
        failed=lambda count: (
            f"payments or refunds in {count} (project, currency, type) groups"
            " are not in the project currency: see revenue_by_currency_daily"
        ),
        passed="all revenue of the run's windows is in the project currency",
        severity="WARN",
        metadata={"scope": env.scope.describe()},
        sample_rows=10,
    )
