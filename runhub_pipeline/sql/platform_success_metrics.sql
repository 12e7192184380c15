-- platform_success_metrics: one row per watermark T (as_of), the history of the plan's success
-- metrics pooled over all projects, each beside its target (CONTRACT §5); time column as_of, the
-- rolling windows being [T - x, T). Computed after the publish of T, so fresh_share sees it:
-- a project is fresh when no business_kpi_daily row or deletion of it is newer than the app's
-- last publish ($published_through, the newest change it carried). A zero denominator is NULL.
-- A re-run at the same T replaces that T's row.

create table if not exists platform_success_metrics (
    as_of timestamptz not null,
    digest_delivery_rate_30d double,
    digest_delivery_rate_30d_target double not null,
    workflow_completion_rate_7d double,
    workflow_completion_rate_7d_target double not null,
    empty_state_rate double,
    empty_state_rate_target double not null,
    fresh_share double,
    fresh_share_target double not null,
    connected_projects bigint not null,
    active_projects_24h bigint not null,
    updated_at timestamptz not null
);

delete from platform_success_metrics where as_of = cast($watermark as timestamptz);

insert into platform_success_metrics (
    as_of, digest_delivery_rate_30d, digest_delivery_rate_30d_target,
    workflow_completion_rate_7d, workflow_completion_rate_7d_target, empty_state_rate,
    empty_state_rate_target, fresh_share, fresh_share_target, connected_projects,
    active_projects_24h, updated_at
)
with digests as (
    select
        sum(d.emails) filter (where d.status = 'sent') as sent,
        sum(d.emails) filter (where d.status in ('sent', 'failed', 'bounced')) as delivered_or_not
    from digest_metrics as d
),
runs as (
    select
        sum(w.succeeded) as succeeded,
        sum(w.succeeded + w.failed) as finished
    from workflow_run_metrics as w
),
connected as (
    select
        o.project_id,
        exists (
            select 1
            from stg_business_events as e
            where e.project_id = o.project_id
                and e.occurred_at >= cast($watermark as timestamptz) - interval '7 days'
                and e.occurred_at < cast($watermark as timestamptz)
        ) or exists (
            select 1
            from stg_analytics_events as a
            where a.project_id = o.project_id
                and a.occurred_at >= cast($watermark as timestamptz) - interval '7 days'
                and a.occurred_at < cast($watermark as timestamptz)
        ) as has_events_7d
    from run_overview as o
    where o.tracking_connected or o.payments_connected or o.forms_connected
),
active as (
    select distinct x.project_id
    from (
        select e.project_id
        from stg_business_events as e
        where e.received_at >= cast($watermark as timestamptz) - interval '24 hours'
            and e.received_at < cast($watermark as timestamptz)
        union all
        select a.project_id
        from stg_analytics_events as a
        where a.received_at >= cast($watermark as timestamptz) - interval '24 hours'
            and a.received_at < cast($watermark as timestamptz)
    ) as x
),
freshness as (
    select
        t.project_id,
        not exists (
            select 1
            from business_kpi_daily as k
            where k.project_id = t.project_id
                and k.updated_at > cast($published_through as timestamptz)
        ) and not exists (
            select 1
            from business_kpi_daily_deletions as dl
            where dl.project_id = t.project_id
                and dl.deleted_at > cast($published_through as timestamptz)
        ) as is_fresh
    from active as t
),
counts as (
    select
        (select count(*) from connected as c) as connected_projects,
        (select count(*) from connected as c where not c.has_events_7d) as empty_projects,
        (select count(*) from freshness as f) as active_projects,
        (select count(*) from freshness as f where f.is_fresh) as fresh_projects
)
select
    cast($watermark as timestamptz) as as_of,
    cast(g.sent as double) / nullif(g.delivered_or_not, 0) as digest_delivery_rate_30d,
    cast($digest_delivery_target as double) as digest_delivery_rate_30d_target,
    cast(r.succeeded as double) / nullif(r.finished, 0) as workflow_completion_rate_7d,
    cast($workflow_completion_target as double) as workflow_completion_rate_7d_target,
    cast(n.empty_projects as double) / nullif(n.connected_projects, 0) as empty_state_rate,
    cast($empty_state_target as double) as empty_state_rate_target,
    cast(n.fresh_projects as double) / nullif(n.active_projects, 0) as fresh_share,
    cast($fresh_share_target as double) as fresh_share_target,
    cast(n.connected_projects as bigint) as connected_projects,
    cast(n.active_projects as bigint) as active_projects_24h,
    cast($updated_at as timestamptz) as updated_at
from counts as n
cross join digests as g
cross join runs as r;
