-- alert_counts_15min: one row per (project_id, bucket_start) with a non-zero count; time column
-- occurred_at (started_at for checkouts), bucket_start = its 15-minute UTC bucket. Feeds
-- alerting: payment_failed, checkout_started and abandoned_checkouts (checkouts started in the
-- bucket that are now abandoned or recovered, as of T) (CONTRACT §5).
-- Incremental: recomputes exactly the buckets of staged business-event changes in
-- ($from_seq, $to_seq] and of checkouts whose row changed (_checkouts_changed, left by
-- fct_checkouts in the same transaction).
{%- macro bucket_of(column) -%}
to_timestamp(floor(extract(epoch from {{ column }}) / 900) * 900)
{%- endmacro %}

create table if not exists alert_counts_15min (
    project_id varchar not null,
    bucket_start timestamptz not null,
    payment_failed bigint not null,
    checkout_started bigint not null,
    abandoned_checkouts bigint not null
);

drop table if exists _alert_buckets;
create temporary table _alert_buckets as
select distinct
    x.project_id,
    {{ bucket_of("x.occurred_at") }} as bucket_start
from (
    select
        c.project_id,
        c.occurred_at
    from stg_changes as c
    where c.change_seq > $from_seq and c.change_seq <= $to_seq
        and c.source_table = 'business_events' and c.occurred_at is not null
    union all
    select
        k.project_id,
        k.started_at as occurred_at
    from _checkouts_changed as k
) as x;

delete from alert_counts_15min as a
where exists (
    select 1
    from _alert_buckets as b
    where b.project_id = a.project_id and b.bucket_start = a.bucket_start
);

insert into alert_counts_15min (
    project_id, bucket_start, payment_failed, checkout_started, abandoned_checkouts
)
with events as (
    select
        b.project_id,
        b.bucket_start,
        count(*) filter (where e.event_type = 'payment_failed') as payment_failed,
        count(*) filter (where e.event_type = 'checkout_started') as checkout_started
    from _alert_buckets as b
    join stg_business_events as e
        on e.project_id = b.project_id
        and e.occurred_at >= b.bucket_start
        and e.occurred_at < b.bucket_start + interval '15 minutes'
    where e.event_type in ('payment_failed', 'checkout_started')
    group by b.project_id, b.bucket_start
),
abandoned as (
    select
        b.project_id,
        b.bucket_start,
        count(*) as abandoned_checkouts
    from _alert_buckets as b
    join fct_checkouts as f
        on f.project_id = b.project_id
        and f.started_at >= b.bucket_start
        and f.started_at < b.bucket_start + interval '15 minutes'
    where f.status in ('abandoned', 'recovered')
    group by b.project_id, b.bucket_start
)
select
    b.project_id,
    b.bucket_start,
    cast(coalesce(e.payment_failed, 0) as bigint) as payment_failed,
    cast(coalesce(e.checkout_started, 0) as bigint) as checkout_started,
    cast(coalesce(a.abandoned_checkouts, 0) as bigint) as abandoned_checkouts
from _alert_buckets as b
left join events as e on e.project_id = b.project_id and e.bucket_start = b.bucket_start
left join abandoned as a on a.project_id = b.project_id and a.bucket_start = b.bucket_start
where coalesce(e.payment_failed, 0) + coalesce(e.checkout_started, 0)
    + coalesce(a.abandoned_checkouts, 0) > 0;

delete from mart_progress where mart = 'alert_counts_15min';

insert into mart_progress (mart, change_seq, watermark)
select
    'alert_counts_15min' as mart,
    $to_seq as change_seq,
    cast($watermark as timestamptz) as watermark;
