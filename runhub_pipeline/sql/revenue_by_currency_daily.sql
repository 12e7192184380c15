-- revenue_by_currency_daily: one row per (project_id, day, currency) with at least one staged
-- payment_succeeded or refund_issued; time column occurred_at, day = its local date in the
-- project's time zone. Holds every currency's amounts side by side, never added across
-- currencies (CONTRACT §5).
-- Incremental: recomputes exactly the (project, day) pairs touched by staged business-event
-- changes in ($from_seq, $to_seq] and, for a project whose time zone changed, all of its days.

create table if not exists revenue_by_currency_daily (
    project_id varchar not null,
    day date not null,
    currency varchar not null,
    orders bigint not null,
    revenue_cents bigint not null,
    refunds bigint not null,
    refunded_cents bigint not null
);

drop table if exists _revenue_project_changes;
create temporary table _revenue_project_changes as
select distinct c.project_id
from stg_changes as c
where c.change_seq > $from_seq and c.change_seq <= $to_seq and c.occurred_at is null;

drop table if exists _revenue_touched;
create temporary table _revenue_touched as
select
    c.project_id,
    cast(c.occurred_at at time zone p.timezone as date) as day
from stg_changes as c
join stg_projects as p on p.project_id = c.project_id
where c.change_seq > $from_seq and c.change_seq <= $to_seq
    and c.source_table = 'business_events' and c.occurred_at is not null
union
select
    r.project_id,
    r.day
from revenue_by_currency_daily as r
join _revenue_project_changes as pc on pc.project_id = r.project_id
union
select
    e.project_id,
    cast(e.occurred_at at time zone p.timezone as date) as day
from stg_business_events as e
join _revenue_project_changes as pc on pc.project_id = e.project_id
join stg_projects as p on p.project_id = e.project_id
where e.event_type in ('payment_succeeded', 'refund_issued');

-- A local day lies in [day - 1, day + 2) UTC whatever the offset.
drop table if exists _revenue_pairs;
create temporary table _revenue_pairs as
select
    t.project_id,
    t.day,
    p.timezone,
    cast(t.day as timestamptz) - interval '1 day' as scan_from,
    cast(t.day as timestamptz) + interval '2 days' as scan_to
from (select distinct r.project_id, r.day from _revenue_touched as r) as t
left join stg_projects as p on p.project_id = t.project_id;

delete from revenue_by_currency_daily as r
where exists (
    select 1 from _revenue_pairs as pr where pr.project_id = r.project_id and pr.day = r.day
);

insert into revenue_by_currency_daily (
    project_id, day, currency, orders, revenue_cents, refunds, refunded_cents
)
select
    pr.project_id,
    pr.day,
    e.currency,
    cast(count(*) filter (where e.event_type = 'payment_succeeded') as bigint) as orders,
    cast(
        coalesce(sum(e.amount_cents) filter (where e.event_type = 'payment_succeeded'), 0)
        as bigint
    ) as revenue_cents,
    cast(count(*) filter (where e.event_type = 'refund_issued') as bigint) as refunds,
    cast(
        coalesce(sum(e.amount_cents) filter (where e.event_type = 'refund_issued'), 0) as bigint
    ) as refunded_cents
from _revenue_pairs as pr
join stg_business_events as e
    on e.project_id = pr.project_id
    and e.occurred_at >= pr.scan_from and e.occurred_at < pr.scan_to
where e.event_type in ('payment_succeeded', 'refund_issued')
    and cast(e.occurred_at at time zone pr.timezone as date) = pr.day
group by pr.project_id, pr.day, e.currency;

delete from mart_progress where mart = 'revenue_by_currency_daily';

insert into mart_progress (mart, change_seq, watermark)
select
    'revenue_by_currency_daily' as mart,
    $to_seq as change_seq,
    cast($watermark as timestamptz) as watermark;
