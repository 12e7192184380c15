-- run_overview: one row per project (of stg_projects), what the Run Hub overview shows as of the
-- watermark T (as_of); time columns occurred_at (events, checkouts' started_at) in rolling
-- [T - x, T) windows (CONTRACT §5). Reads fct_checkouts, workflow_run_metrics, digest_metrics and
-- business_kpi_daily as computed at the same T. Small: fully recomputed every window.

create table if not exists run_overview (
    project_id varchar not null,
    as_of timestamptz not null,
    payment_failed_24h bigint not null,
    checkout_started_24h bigint not null,
    abandoned_open bigint not null,
    recovered_revenue_cents_7d bigint not null,
    workflow_queued_7d bigint not null,
    workflow_running_7d bigint not null,
    workflow_succeeded_7d bigint not null,
    workflow_failed_7d bigint not null,
    stuck_runs bigint not null,
    digest_sent_30d bigint not null,
    digest_failed_30d bigint not null,
    last_rollup_at timestamptz,
    last_event_received_at timestamptz,
    tracking_connected boolean not null,
    payments_connected boolean not null,
    forms_connected boolean not null
);

delete from run_overview;

insert into run_overview (
    project_id, as_of, payment_failed_24h, checkout_started_24h, abandoned_open,
    recovered_revenue_cents_7d, workflow_queued_7d, workflow_running_7d, workflow_succeeded_7d,
    workflow_failed_7d, stuck_runs, digest_sent_30d, digest_failed_30d, last_rollup_at,
    last_event_received_at, tracking_connected, payments_connected, forms_connected
)
with business_recent as (
    select
        e.project_id,
        count(*) filter (
            where e.event_type = 'payment_failed'
                and e.occurred_at >= cast($watermark as timestamptz) - interval '24 hours'
        ) as payment_failed_24h,
        count(*) filter (
            where e.event_type = 'checkout_started'
                and e.occurred_at >= cast($watermark as timestamptz) - interval '24 hours'
        ) as checkout_started_24h,
        count(*) filter (where e.event_type = 'form_submitted') as form_submissions_30d
    from stg_business_events as e
    where e.occurred_at >= cast($watermark as timestamptz) - interval '30 days'
        and e.occurred_at < cast($watermark as timestamptz)
    group by e.project_id
),
analytics_recent as (
    select
        a.project_id,
        count(*) as events_7d
    from stg_analytics_events as a
    where a.occurred_at >= cast($watermark as timestamptz) - interval '7 days'
        and a.occurred_at < cast($watermark as timestamptz)
    group by a.project_id
),
checkouts_recent as (
    select
        f.project_id,
        count(*) filter (
            where f.status = 'abandoned'
                and f.started_at >= cast($watermark as timestamptz) - interval '48 hours'
        ) as abandoned_open,
        sum(f.credited_revenue_cents) as recovered_revenue_cents_7d
    from fct_checkouts as f
    where f.started_at >= cast($watermark as timestamptz) - interval '7 days'
        and f.started_at < cast($watermark as timestamptz)
    group by f.project_id
),
received as (
    select
        x.project_id,
        max(x.received_at) as last_event_received_at
    from (
        select
            e.project_id,
            e.received_at
        from stg_business_events as e
        union all
        select
            a.project_id,
            a.received_at
        from stg_analytics_events as a
    ) as x
    group by x.project_id
),
rollups as (
    select
        k.project_id,
        max(k.updated_at) as last_rollup_at
    from business_kpi_daily as k
    group by k.project_id
),
digests as (
    select
        d.project_id,
        sum(d.emails) filter (where d.status = 'sent') as digest_sent_30d,
        sum(d.emails) filter (where d.status in ('failed', 'bounced')) as digest_failed_30d
    from digest_metrics as d
    group by d.project_id
)
select
    p.project_id,
    cast($watermark as timestamptz) as as_of,
    cast(coalesce(b.payment_failed_24h, 0) as bigint) as payment_failed_24h,
    cast(coalesce(b.checkout_started_24h, 0) as bigint) as checkout_started_24h,
    cast(coalesce(c.abandoned_open, 0) as bigint) as abandoned_open,
    cast(coalesce(c.recovered_revenue_cents_7d, 0) as bigint) as recovered_revenue_cents_7d,
    cast(coalesce(w.queued, 0) as bigint) as workflow_queued_7d,
    cast(coalesce(w.running, 0) as bigint) as workflow_running_7d,
    cast(coalesce(w.succeeded, 0) as bigint) as workflow_succeeded_7d,
    cast(coalesce(w.failed, 0) as bigint) as workflow_failed_7d,
    cast(coalesce(w.stuck_runs, 0) as bigint) as stuck_runs,
    cast(coalesce(d.digest_sent_30d, 0) as bigint) as digest_sent_30d,
    cast(coalesce(d.digest_failed_30d, 0) as bigint) as digest_failed_30d,
    r.last_rollup_at,
    v.last_event_received_at,
    coalesce(p.tracking_installed, false) or coalesce(a.events_7d, 0) > 0 as tracking_connected,
    coalesce(p.stripe_connected, false) as payments_connected,
    coalesce(p.forms_count, 0) > 0 or coalesce(b.form_submissions_30d, 0) > 0
        as forms_connected
from stg_projects as p
left join business_recent as b on b.project_id = p.project_id
left join analytics_recent as a on a.project_id = p.project_id
left join checkouts_recent as c on c.project_id = p.project_id
left join workflow_run_metrics as w on w.project_id = p.project_id
left join digests as d on d.project_id = p.project_id
left join rollups as r on r.project_id = p.project_id
left join received as v on v.project_id = p.project_id;
