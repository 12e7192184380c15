-- stg_analytics_events: one row per staged in-house analytics event, grain event_id, time column
-- occurred_at; also writes this table's rows of quarantined_events and ingest_ledger, and leaves
-- _stg_old and _stg_new for stg_event_changes. Runs inside one transaction for the ingest windows
-- [$window_start, $window_end).
-- Analytics events carry no idempotency key, so none is a duplicate. Rules: CONTRACT §4.

create or replace temporary table _analytics_classified as
with normalized as (
    select
        raw.id as event_id,
        raw.ingest_window_start,
        raw.received_at,
        nullif(trim(raw.project_id), '') as project_id,
        lower(nullif(trim(raw.event_name), '')) as event_name,
        nullif(trim(raw.session_id), '') as session_id,
        nullif(trim(raw.anonymous_id), '') as anonymous_id,
        nullif(trim(raw.path), '') as path,
        try_cast(nullif(trim(raw.occurred_at), '') as timestamptz) as occurred_at,
        raw
    from raw_analytics_events as raw
    where raw.ingest_window_start >= $window_start and raw.ingest_window_start < $window_end
)
select
    n.*,
    case
        when n.project_id is null or p.project_id is null then 'unknown_project'
        when n.session_id is null then 'missing_session'
        when n.occurred_at is null then 'bad_occurred_at'
        when n.occurred_at > n.received_at + interval 1 day then 'future_occurred_at'
    end as reason
from normalized as n
left join stg_projects as p on p.project_id = n.project_id;

delete from quarantined_events
where source_table = 'inhouse_analytics_events'
    and ingest_window_start >= $window_start and ingest_window_start < $window_end;

insert into quarantined_events (source_table, source_id, project_id, reason, raw, ingest_window_start)
select
    'inhouse_analytics_events' as source_table,
    c.event_id as source_id,
    c.project_id,
    c.reason,
    to_json(c.raw) as raw,
    c.ingest_window_start
from _analytics_classified as c
where c.reason is not null;

create or replace temporary table _stg_old as
select s.*
from stg_analytics_events as s
where s.ingest_window_start >= $window_start and s.ingest_window_start < $window_end;

create or replace temporary table _stg_new as
select
    c.event_id, c.ingest_window_start, c.received_at, c.project_id, c.event_name, c.session_id,
    c.anonymous_id, c.path, c.occurred_at
from _analytics_classified as c
where c.reason is null;

delete from stg_analytics_events
where ingest_window_start >= $window_start and ingest_window_start < $window_end;

insert into stg_analytics_events select * from _stg_new;

update ingest_ledger as l
set
    staged = counts.staged,
    duplicates = 0,
    quarantined = counts.quarantined,
    staged_at = $staged_at
from (
    select
        l2.window_start,
        (select count(*) from stg_analytics_events as s
            where s.ingest_window_start = l2.window_start) as staged,
        (select count(*) from quarantined_events as q
            where q.source_table = 'inhouse_analytics_events'
                and q.ingest_window_start = l2.window_start) as quarantined
    from ingest_ledger as l2
    where l2.source_table = 'inhouse_analytics_events'
        and l2.window_start >= $window_start and l2.window_start < $window_end
) as counts
where l.source_table = 'inhouse_analytics_events' and l.window_start = counts.window_start;
