-- stg_business_events: one row per staged business event (the kept copy of each idempotency key),
-- grain event_id, time column occurred_at; also writes this table's rows of quarantined_events,
-- int_business_events_passed (the dedupe pool) and ingest_ledger, and leaves _stg_old and _stg_new
-- for stg_event_changes.
-- Runs inside one transaction for the ingest windows [$window_start, $window_end).
-- Rules: CONTRACT §4. The first failing quarantine rule is the reason.

create or replace temporary table _business_classified as
with normalized as (
    select
        raw.id as event_id,
        raw.ingest_window_start,
        raw.received_at,
        nullif(trim(raw.project_id), '') as project_id,
        lower(nullif(trim(raw.event_type), '')) as event_type,
        nullif(trim(raw.occurred_at), '') as occurred_at_text,
        try_cast(nullif(trim(raw.occurred_at), '') as timestamptz) as occurred_at,
        nullif(trim(raw.idempotency_key), '') as idempotency_key,
        nullif(trim(raw.actor_email), '') as actor_email,
        nullif(trim(raw.session_id), '') as session_id,
        nullif(trim(raw.amount_cents), '') as amount_text,
        upper(nullif(trim(raw.currency), '')) as currency,
        nullif(trim(raw.payload), '') as payload_text,
        raw
    from raw_business_events as raw
    where raw.ingest_window_start >= $window_start and raw.ingest_window_start < $window_end
),
typed as (
    select
        n.*,
        case
            when regexp_full_match(lower(n.actor_email), '[^@\s<>]+@[^@\s<>]+\.[a-z]{2,}')
                then lower(n.actor_email)
        end as email_norm,
        -- An integer literal, optionally with a zero fraction (SQLite may store 1200 as 1200.0).
        case
            when regexp_full_match(n.amount_text, '\+?[0-9]+(\.0*)?')
                then try_cast(try_cast(n.amount_text as decimal(38, 0)) as bigint)
        end as amount_cents,
        n.event_type in ('payment_succeeded', 'payment_failed', 'refund_issued') as is_money
    from normalized as n
)
select
    t.*,
    case
        when t.project_id is null or p.project_id is null then 'unknown_project'
        when t.event_type is null then 'missing_event_type'
        when t.occurred_at is null then 'bad_occurred_at'
        when t.occurred_at > t.received_at + interval 1 day then 'future_occurred_at'
        when t.is_money and (t.amount_cents is null or t.amount_cents < 0) then 'bad_amount'
        when t.is_money and not coalesce(regexp_full_match(t.currency, '[A-Z]{3}'), false)
            then 'bad_currency'
        when t.payload_text is not null
            and coalesce(json_type(try_cast(t.payload_text as json)), '') <> 'OBJECT'
            then 'bad_payload'
    end as reason
from typed as t
left join stg_projects as p on p.project_id = t.project_id;

delete from quarantined_events
where source_table = 'business_events'
    and ingest_window_start >= $window_start and ingest_window_start < $window_end;

insert into quarantined_events (source_table, source_id, project_id, reason, raw, ingest_window_start)
select
    'business_events' as source_table,
    c.event_id as source_id,
    c.project_id,
    c.reason,
    to_json(c.raw) as raw,
    c.ingest_window_start
from _business_classified as c
where c.reason is not null;

-- The keys whose kept copy may change: those of the windows' old and new passing rows.
create or replace temporary table _affected_keys as
select distinct project_id, idempotency_key
from int_business_events_passed
where ingest_window_start >= $window_start and ingest_window_start < $window_end
    and idempotency_key is not null
union
select distinct project_id, idempotency_key
from _business_classified
where reason is null and idempotency_key is not null;

delete from int_business_events_passed
where ingest_window_start >= $window_start and ingest_window_start < $window_end;

insert into int_business_events_passed
select
    c.event_id, c.ingest_window_start, c.received_at, c.project_id, c.event_type, c.occurred_at,
    c.idempotency_key, c.actor_email, c.email_norm, c.session_id,
    c.amount_cents,
    c.currency, try_cast(c.payload_text as json) as payload
from _business_classified as c
where c.reason is null;

-- Old staged rows that may be replaced: the windows' own rows and every copy of an affected key.
create or replace temporary table _stg_old as
select s.*
from stg_business_events as s
where (s.ingest_window_start >= $window_start and s.ingest_window_start < $window_end)
    or exists (
        select 1 from _affected_keys as k
        where k.project_id = s.project_id and k.idempotency_key = s.idempotency_key
    );

create or replace temporary table _stg_new as
with candidates as (
    select p.*
    from int_business_events_passed as p
    where (p.ingest_window_start >= $window_start and p.ingest_window_start < $window_end
            and p.idempotency_key is null)
        or exists (
            select 1 from _affected_keys as k
            where k.project_id = p.project_id and k.idempotency_key = p.idempotency_key
        )
),
ranked as (
    select
        c.*,
        row_number() over (
            partition by c.project_id, coalesce(c.idempotency_key, 'id:' || c.event_id::varchar)
            order by c.received_at, c.event_id
        ) as copy_rank
    from candidates as c
)
select
    r.event_id, r.ingest_window_start, r.received_at, r.project_id, r.event_type, r.occurred_at,
    r.idempotency_key, r.actor_email, r.email_norm, r.session_id, r.amount_cents, r.currency,
    r.payload
from ranked as r
where r.copy_rank = 1;

delete from stg_business_events as s
where s.event_id in (select o.event_id from _stg_old as o);

insert into stg_business_events select * from _stg_new;

-- Ledger rows of every window whose counts may have moved: these windows and the windows of any
-- copy of an affected key.
create or replace temporary table _ledger_windows as
select distinct ingest_window_start as window_start
from int_business_events_passed as p
where exists (
    select 1 from _affected_keys as k
    where k.project_id = p.project_id and k.idempotency_key = p.idempotency_key
)
union
select distinct window_start
from ingest_ledger
where source_table = 'business_events'
    and window_start >= $window_start and window_start < $window_end;

update ingest_ledger as l
set
    staged = counts.staged,
    duplicates = counts.passed - counts.staged,
    quarantined = counts.quarantined,
    staged_at = $staged_at
from (
    select
        w.window_start,
        (select count(*) from stg_business_events as s
            where s.ingest_window_start = w.window_start) as staged,
        (select count(*) from int_business_events_passed as p
            where p.ingest_window_start = w.window_start) as passed,
        (select count(*) from quarantined_events as q
            where q.source_table = 'business_events'
                and q.ingest_window_start = w.window_start) as quarantined
    from _ledger_windows as w
) as counts
where l.source_table = 'business_events' and l.window_start = counts.window_start;
