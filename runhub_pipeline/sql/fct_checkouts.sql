-- fct_checkouts: one row per staged checkout_started event, grain checkout_event_id, time column
-- started_at (UTC instant; the local day is derived with the project's time zone downstream).
-- The recovery funnel as of the watermark T (CONTRACT §5): earliest matching payment, status,
-- credited recovered revenue and the recovery run that preceded the payment.
-- Incremental: recomputes only the checkouts that the staged changes in ($from_seq, $to_seq] or
-- the passing of T from $previous_watermark to $watermark can touch, and leaves the old and new
-- versions of every row that changed in the temporary table _checkouts_changed, which the daily
-- and 15-minute marts run right after this model (same transaction) read.
{%- set row_columns = {
    "checkout_event_id": "bigint not null",
    "project_id": "varchar not null",
    "session_id": "varchar",
    "email_norm": "varchar",
    "started_at": "timestamptz not null",
    "status": "varchar not null",
    "paid_at": "timestamptz",
    "payment_amount_cents": "bigint",
    "payment_currency": "varchar",
    "credited_revenue_cents": "bigint not null",
    "recovered_by_run_id": "varchar",
} %}
{#- A payment belongs to a checkout of the same project with the same session or the same e-mail
    address: one union branch per key. #}
{%- set match_keys = ["session_id", "email_norm"] %}
{%- macro earliest_payments(scope) %}
select
    ranked.checkout_event_id,
    ranked.payment_event_id,
    ranked.paid_at,
    ranked.amount_cents,
    ranked.currency
from (
    select
        matched.checkout_event_id,
        matched.payment_event_id,
        matched.paid_at,
        matched.amount_cents,
        matched.currency,
        row_number() over (
            partition by matched.checkout_event_id
            order by matched.paid_at, matched.payment_event_id
        ) as payment_rank
    from (
    {%- for key in match_keys %}
        {{- "\n        union" if not loop.first }}
        select
            c.checkout_event_id,
            p.event_id as payment_event_id,
            p.occurred_at as paid_at,
            p.amount_cents,
            p.currency
        from {{ scope }} as c
        join stg_business_events as p
            on p.project_id = c.project_id and p.{{ key }} = c.{{ key }}
        where p.event_type = 'payment_succeeded' and p.occurred_at >= c.started_at
    {%- endfor %}
    ) as matched
) as ranked
where ranked.payment_rank = 1
{%- endmacro %}

create table if not exists fct_checkouts (
{%- for column, kind in row_columns.items() %}
    {{ column }} {{ kind }}{{ "," if not loop.last }}
{%- endfor %}
);

-- Business events that appeared or disappeared since the last run, by (project, occurred_at).
drop table if exists _checkout_event_changes;
create temporary table _checkout_event_changes as
select distinct
    c.project_id,
    c.occurred_at
from stg_changes as c
where c.change_seq > $from_seq and c.change_seq <= $to_seq
    and c.source_table = 'business_events' and c.occurred_at is not null;

-- Projects whose time zone or currency changed: every checkout of theirs is recomputed.
drop table if exists _checkout_project_changes;
create temporary table _checkout_project_changes as
select distinct c.project_id
from stg_changes as c
where c.change_seq > $from_seq and c.change_seq <= $to_seq and c.occurred_at is null;

-- Checkouts whose row may change: the changed checkouts, those whose 30-minute mark T passed,
-- those a changed payment or recovery e-mail may match, and those whose current row refers to a
-- changed event (the checkout itself, its payment, a recovery e-mail in (started_at, paid_at)).
drop table if exists _checkouts_touched;
create temporary table _checkouts_touched as
with changed_events as (
    select
        e.event_id,
        e.project_id,
        e.event_type,
        e.occurred_at,
        e.session_id,
        e.email_norm
    from stg_business_events as e
    join _checkout_event_changes as c
        on c.project_id = e.project_id and c.occurred_at = e.occurred_at
),
checkouts as (
    select
        e.event_id,
        e.project_id,
        e.occurred_at,
        e.session_id,
        e.email_norm
    from stg_business_events as e
    where e.event_type = 'checkout_started'
)
select x.event_id as checkout_event_id
from changed_events as x
where x.event_type = 'checkout_started'
union
select k.event_id as checkout_event_id
from checkouts as k
where k.occurred_at > cast($previous_watermark as timestamptz) - interval '30 minutes'
    and k.occurred_at <= cast($watermark as timestamptz) - interval '30 minutes'
union
select k.event_id as checkout_event_id
from changed_events as x
join checkouts as k on k.project_id = x.project_id and k.session_id = x.session_id
where x.event_type = 'payment_succeeded' and k.occurred_at <= x.occurred_at
union
select k.event_id as checkout_event_id
from changed_events as x
join checkouts as k on k.project_id = x.project_id and k.email_norm = x.email_norm
where x.event_type in ('payment_succeeded', 'recovery_email_sent')
    and k.occurred_at <= x.occurred_at
union
select f.checkout_event_id
from fct_checkouts as f
join _checkout_event_changes as c on c.project_id = f.project_id and c.occurred_at = f.started_at
union
select f.checkout_event_id
from fct_checkouts as f
join _checkout_event_changes as c on c.project_id = f.project_id and c.occurred_at = f.paid_at
union
select f.checkout_event_id
from fct_checkouts as f
join _checkout_event_changes as c on c.project_id = f.project_id
where f.status = 'recovered' and c.occurred_at > f.started_at and c.occurred_at < f.paid_at
union
select k.event_id as checkout_event_id
from checkouts as k
join _checkout_project_changes as pc on pc.project_id = k.project_id
union
select f.checkout_event_id
from fct_checkouts as f
join _checkout_project_changes as pc on pc.project_id = f.project_id;

drop table if exists _checkout_candidates;
create temporary table _checkout_candidates as
select
    e.event_id as checkout_event_id,
    e.project_id,
    e.session_id,
    e.email_norm,
    e.occurred_at as started_at
from stg_business_events as e
join _checkouts_touched as t on t.checkout_event_id = e.event_id
where e.event_type = 'checkout_started';

-- Credit goes to the latest recovered checkout of a payment, so every checkout that shares an
-- old or new earliest payment with a touched checkout is recomputed with it.
drop table if exists _touched_payments;
create temporary table _touched_payments as
{{ earliest_payments("_checkout_candidates") }};

drop table if exists _closure_payments;
create temporary table _closure_payments as
select
    p.project_id,
    p.occurred_at,
    p.session_id,
    p.email_norm
from stg_business_events as p
join _touched_payments as tp on tp.payment_event_id = p.event_id
union
select
    p.project_id,
    p.occurred_at,
    p.session_id,
    p.email_norm
from fct_checkouts as f
join _checkouts_touched as t on t.checkout_event_id = f.checkout_event_id
join stg_business_events as p on p.project_id = f.project_id and p.occurred_at = f.paid_at
where p.event_type = 'payment_succeeded'
    and (p.session_id = f.session_id or p.email_norm = f.email_norm);

insert into _checkout_candidates (checkout_event_id, project_id, session_id, email_norm, started_at)
{%- for key in match_keys %}
{{- "\nunion" if not loop.first }}
select
    k.event_id as checkout_event_id,
    k.project_id,
    k.session_id,
    k.email_norm,
    k.occurred_at as started_at
from _closure_payments as cp
join stg_business_events as k on k.project_id = cp.project_id and k.{{ key }} = cp.{{ key }}
where k.event_type = 'checkout_started' and k.occurred_at <= cp.occurred_at
    and not exists (
        select 1 from _checkout_candidates as c where c.checkout_event_id = k.event_id
    )
{%- endfor %};

-- Every checkout whose stored row is replaced: the candidates and the touched rows that vanished.
drop table if exists _checkout_scope;
create temporary table _checkout_scope as
select c.checkout_event_id
from _checkout_candidates as c
union
select t.checkout_event_id
from _checkouts_touched as t;

drop table if exists _checkout_payments;
create temporary table _checkout_payments as
{{ earliest_payments("_checkout_candidates") }};

drop table if exists _checkouts_new;
create temporary table _checkouts_new as
with statused as (
    select
        c.checkout_event_id,
        c.project_id,
        c.session_id,
        c.email_norm,
        c.started_at,
        case
            when m.paid_at <= c.started_at + interval '30 minutes' then 'converted'
            when m.paid_at <= c.started_at + interval '48 hours' then 'recovered'
            when cast($watermark as timestamptz) < c.started_at + interval '30 minutes'
                then 'pending'
            else 'abandoned'
        end as status,
        m.payment_event_id,
        m.paid_at,
        m.amount_cents as payment_amount_cents,
        m.currency as payment_currency,
        p.currency as project_currency
    from _checkout_candidates as c
    left join stg_projects as p on p.project_id = c.project_id
    left join _checkout_payments as m on m.checkout_event_id = c.checkout_event_id
),
credit_ranks as (
    select
        s.checkout_event_id,
        row_number() over (
            partition by s.payment_event_id
            order by s.started_at desc, s.checkout_event_id desc
        ) as credit_rank
    from statused as s
    where s.status = 'recovered'
),
recovery_runs as (
    select
        ranked.checkout_event_id,
        ranked.run_id
    from (
        select
            s.checkout_event_id,
            json_extract_string(r.payload, '$.run_id') as run_id,
            row_number() over (
                partition by s.checkout_event_id
                order by r.occurred_at desc, r.event_id desc
            ) as email_rank
        from statused as s
        join stg_business_events as r
            on r.project_id = s.project_id and r.email_norm = s.email_norm
        where s.status = 'recovered'
            and r.event_type = 'recovery_email_sent'
            and r.occurred_at > s.started_at
            and r.occurred_at < s.paid_at
    ) as ranked
    where ranked.email_rank = 1
)
select
    s.checkout_event_id,
    s.project_id,
    s.session_id,
    s.email_norm,
    s.started_at,
    s.status,
    s.paid_at,
    s.payment_amount_cents,
    s.payment_currency,
    cast(
        case
            when cr.credit_rank = 1 and s.payment_currency = s.project_currency
                then s.payment_amount_cents
            else 0
        end as bigint
    ) as credited_revenue_cents,
    rr.run_id as recovered_by_run_id
from statused as s
left join credit_ranks as cr on cr.checkout_event_id = s.checkout_event_id
left join recovery_runs as rr on rr.checkout_event_id = s.checkout_event_id;

-- Old and new versions of the rows that really changed (an identical recomputed row is no change).
drop table if exists _checkouts_changed;
create temporary table _checkouts_changed as
select
    o.checkout_event_id,
    o.project_id,
    o.started_at
from fct_checkouts as o
join _checkout_scope as s on s.checkout_event_id = o.checkout_event_id
where not exists (
    select 1
    from _checkouts_new as n
    where n.checkout_event_id = o.checkout_event_id
    {%- for column in (row_columns | list)[1:] %}
        and n.{{ column }} is not distinct from o.{{ column }}
    {%- endfor %}
)
union
select
    n.checkout_event_id,
    n.project_id,
    n.started_at
from _checkouts_new as n
where not exists (
    select 1
    from fct_checkouts as o
    where o.checkout_event_id = n.checkout_event_id
    {%- for column in (row_columns | list)[1:] %}
        and o.{{ column }} is not distinct from n.{{ column }}
    {%- endfor %}
);

delete from fct_checkouts as f
where f.checkout_event_id in (select c.checkout_event_id from _checkouts_changed as c);

insert into fct_checkouts ({{ row_columns | join(", ") }})
select
{%- for column in row_columns %}
    n.{{ column }}{{ "," if not loop.last }}
{%- endfor %}
from _checkouts_new as n
where n.checkout_event_id in (select c.checkout_event_id from _checkouts_changed as c);

delete from mart_progress where mart = 'fct_checkouts';

insert into mart_progress (mart, change_seq, watermark)
select
    'fct_checkouts' as mart,
    $to_seq as change_seq,
    cast($watermark as timestamptz) as watermark;
