-- business_kpi_daily: one row per (project_id, day) on which at least one staged event of either
-- table falls; time column occurred_at, day = its local date in the project's time zone
-- (DST-correct; an invalid zone is UTC). The daily KPIs the Run Hub overview and digest show
-- (CONTRACT §5), served to the app database. Money in the project currency only; counts and sums
-- BIGINT.
-- Incremental: recomputes exactly the (project, day) pairs touched by staged changes in
-- ($from_seq, $to_seq], by checkouts whose row changed (_checkouts_changed, left by
-- fct_checkouts in the same transaction) and, for a project whose time zone or currency changed,
-- all of its days. A row whose values did not change keeps its updated_at; a row that stops
-- qualifying is deleted and logged in business_kpi_daily_deletions for the publish to the app.
{%- set value_columns = {
    "sessions": "bigint not null",
    "visitors": "bigint not null",
    "page_views": "bigint not null",
    "form_submissions": "bigint not null",
    "leads": "bigint not null",
    "checkouts_started": "bigint not null",
    "payments_failed": "bigint not null",
    "orders": "bigint not null",
    "revenue_cents": "bigint not null",
    "refunds": "bigint not null",
    "refunded_cents": "bigint not null",
    "net_revenue_cents": "bigint not null",
    "conversion_rate": "double",
    "abandoned_checkouts": "bigint not null",
    "recovered_checkouts": "bigint not null",
    "recovered_revenue_cents": "bigint not null",
    "workflow_emails_sent": "bigint not null",
    "currency": "varchar",
} %}
{#- The rows of `table` on each pair's local day, grouped by pair: the scan range narrows the
    join, the local date decides. #}
{%- macro on_local_day(table, alias, time_column) %}
    from _kpi_pairs as pr
    join {{ table }} as {{ alias }}
        on {{ alias }}.project_id = pr.project_id
        and {{ alias }}.{{ time_column }} >= pr.scan_from
        and {{ alias }}.{{ time_column }} < pr.scan_to
    where cast({{ alias }}.{{ time_column }} at time zone pr.timezone as date) = pr.day
    group by pr.project_id, pr.day
{%- endmacro %}

create table if not exists business_kpi_daily (
    project_id varchar not null,
    day date not null,
{%- for column, kind in value_columns.items() %}
    {{ column }} {{ kind }},
{%- endfor %}
    updated_at timestamptz not null
);

-- Rows deleted from business_kpi_daily, so that the publish can delete them in the app too.
create table if not exists business_kpi_daily_deletions (
    project_id varchar not null,
    day date not null,
    deleted_at timestamptz not null
);

drop table if exists _kpi_touched;
create temporary table _kpi_touched as
select
    c.project_id,
    cast(c.occurred_at at time zone p.timezone as date) as day
from stg_changes as c
join stg_projects as p on p.project_id = c.project_id
where c.change_seq > $from_seq and c.change_seq <= $to_seq and c.occurred_at is not null
union
select
    k.project_id,
    cast(k.started_at at time zone p.timezone as date) as day
from _checkouts_changed as k
join stg_projects as p on p.project_id = k.project_id;

-- A project whose time zone or currency changed: its old days and every day it has events on.
drop table if exists _kpi_project_changes;
create temporary table _kpi_project_changes as
select distinct c.project_id
from stg_changes as c
where c.change_seq > $from_seq and c.change_seq <= $to_seq and c.occurred_at is null;

insert into _kpi_touched (project_id, day)
select
    k.project_id,
    k.day
from business_kpi_daily as k
join _kpi_project_changes as pc on pc.project_id = k.project_id
{%- for events in ["stg_business_events", "stg_analytics_events"] %}
union
select
    e.project_id,
    cast(e.occurred_at at time zone p.timezone as date) as day
from {{ events }} as e
join _kpi_project_changes as pc on pc.project_id = e.project_id
join stg_projects as p on p.project_id = e.project_id
{%- endfor %};

-- Every real UTC offset is within a day of UTC, so a local day lies in [day - 1, day + 2) UTC.
drop table if exists _kpi_pairs;
create temporary table _kpi_pairs as
select
    t.project_id,
    t.day,
    p.timezone,
    p.currency,
    cast(t.day as timestamptz) - interval '1 day' as scan_from,
    cast(t.day as timestamptz) + interval '2 days' as scan_to
from (select distinct k.project_id, k.day from _kpi_touched as k) as t
left join stg_projects as p on p.project_id = t.project_id;

drop table if exists _kpi_new;
create temporary table _kpi_new as
with business as (
    select
        pr.project_id,
        pr.day,
        count(*) as events,
        count(*) filter (where e.event_type = 'form_submitted') as form_submissions,
        count(*) filter (where e.event_type = 'lead_created') as leads,
        count(*) filter (where e.event_type = 'checkout_started') as checkouts_started,
        count(*) filter (where e.event_type = 'payment_failed') as payments_failed,
        count(*) filter (where e.event_type = 'payment_succeeded') as orders,
        sum(e.amount_cents) filter (
            where e.event_type = 'payment_succeeded' and e.currency = pr.currency
        ) as revenue_cents,
        count(*) filter (where e.event_type = 'refund_issued') as refunds,
        sum(e.amount_cents) filter (
            where e.event_type = 'refund_issued' and e.currency = pr.currency
        ) as refunded_cents,
        count(*) filter (
            where e.event_type in (
                'recovery_email_sent', 'promo_email_sent', 'onboarding_email_sent'
            )
        ) as workflow_emails_sent
{{- on_local_day("stg_business_events", "e", "occurred_at") }}
),
analytics as (
    select
        pr.project_id,
        pr.day,
        count(*) as events,
        count(distinct a.session_id) as sessions,
        count(distinct a.anonymous_id) as visitors,
        count(*) filter (where a.event_name = 'page_view') as page_views
{{- on_local_day("stg_analytics_events", "a", "occurred_at") }}
),
checkouts as (
    select
        pr.project_id,
        pr.day,
        count(*) filter (where f.status in ('abandoned', 'recovered')) as abandoned_checkouts,
        count(*) filter (where f.status = 'recovered') as recovered_checkouts,
        sum(f.credited_revenue_cents) filter (
            where f.status = 'recovered'
        ) as recovered_revenue_cents
{{- on_local_day("fct_checkouts", "f", "started_at") }}
)
select
    pr.project_id,
    pr.day,
    cast(coalesce(a.sessions, 0) as bigint) as sessions,
    cast(coalesce(a.visitors, 0) as bigint) as visitors,
    cast(coalesce(a.page_views, 0) as bigint) as page_views,
    cast(coalesce(b.form_submissions, 0) as bigint) as form_submissions,
    cast(coalesce(b.leads, 0) as bigint) as leads,
    cast(coalesce(b.checkouts_started, 0) as bigint) as checkouts_started,
    cast(coalesce(b.payments_failed, 0) as bigint) as payments_failed,
    cast(coalesce(b.orders, 0) as bigint) as orders,
    cast(coalesce(b.revenue_cents, 0) as bigint) as revenue_cents,
    cast(coalesce(b.refunds, 0) as bigint) as refunds,
    cast(coalesce(b.refunded_cents, 0) as bigint) as refunded_cents,
    cast(coalesce(b.revenue_cents, 0) - coalesce(b.refunded_cents, 0) as bigint)
        as net_revenue_cents,
    cast(coalesce(b.orders, 0) as double) / nullif(coalesce(a.sessions, 0), 0)
        as conversion_rate,
    cast(coalesce(c.abandoned_checkouts, 0) as bigint) as abandoned_checkouts,
    cast(coalesce(c.recovered_checkouts, 0) as bigint) as recovered_checkouts,
    cast(coalesce(c.recovered_revenue_cents, 0) as bigint) as recovered_revenue_cents,
    cast(coalesce(b.workflow_emails_sent, 0) as bigint) as workflow_emails_sent,
    pr.currency
from _kpi_pairs as pr
left join business as b on b.project_id = pr.project_id and b.day = pr.day
left join analytics as a on a.project_id = pr.project_id and a.day = pr.day
left join checkouts as c on c.project_id = pr.project_id and c.day = pr.day
where b.events > 0 or a.events > 0;

insert into business_kpi_daily_deletions (project_id, day, deleted_at)
select
    k.project_id,
    k.day,
    cast($updated_at as timestamptz) as deleted_at
from business_kpi_daily as k
join _kpi_pairs as pr on pr.project_id = k.project_id and pr.day = k.day
where not exists (
    select 1 from _kpi_new as n where n.project_id = k.project_id and n.day = k.day
);

-- Replace only the rows whose values changed, so updated_at marks real changes.
delete from business_kpi_daily as k
where exists (
    select 1 from _kpi_pairs as pr where pr.project_id = k.project_id and pr.day = k.day
)
    and not exists (
        select 1
        from _kpi_new as n
        where n.project_id = k.project_id and n.day = k.day
        {%- for column in value_columns %}
            and n.{{ column }} is not distinct from k.{{ column }}
        {%- endfor %}
    );

insert into business_kpi_daily (project_id, day, {{ value_columns | join(", ") }}, updated_at)
select
    n.project_id,
    n.day,
{%- for column in value_columns %}
    n.{{ column }},
{%- endfor %}
    cast($updated_at as timestamptz) as updated_at
from _kpi_new as n
where not exists (
    select 1 from business_kpi_daily as k where k.project_id = n.project_id and k.day = n.day
);

delete from mart_progress where mart = 'business_kpi_daily';

insert into mart_progress (mart, change_seq, watermark)
select
    'business_kpi_daily' as mart,
    $to_seq as change_seq,
    cast($watermark as timestamptz) as watermark;
