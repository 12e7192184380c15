-- stg_event_changes: the stg_changes rows of one staged event table ($source_table), grain one row
-- per changed (project, occurred_at), or per (project, local day) with `per_local_day`; time
-- column occurred_at. Runs right after stg_business_events or stg_analytics_events, in their
-- transaction, on the _stg_old and _stg_new they leave: the windows' staged rows before and after.

-- Rows that appeared, disappeared or changed, both versions of a changed one (an unchanged row
-- re-staged is no change). Joined on the grain, event_id: a set EXCEPT of whole rows hashed every
-- column of every row, old and new, though a fresh window has no old rows to compare with.
create or replace temporary table _stg_diff as
select
    o.event_id as old_event_id, o.project_id as old_project_id, o.occurred_at as old_occurred_at,
    n.event_id as new_event_id, n.project_id as new_project_id, n.occurred_at as new_occurred_at
from _stg_old as o
full join _stg_new as n on n.event_id = o.event_id
-- A table alias is its whole row: rows compare column by column, NULLs as equal.
where o is distinct from n;

insert into stg_changes (change_seq, source_table, project_id, occurred_at)
select
    $change_seq as change_seq,
    $source_table as source_table,
    d.project_id,
{%- if per_local_day %}
    -- Any instant of the day names it, under the same stg_projects the marts read.
    min(d.occurred_at) as occurred_at
{%- else %}
    d.occurred_at
{%- endif %}
from (
    select x.old_project_id as project_id, x.old_occurred_at as occurred_at
    from _stg_diff as x
    where x.old_event_id is not null
    union all
    select x.new_project_id as project_id, x.new_occurred_at as occurred_at
    from _stg_diff as x
    where x.new_event_id is not null
) as d
{%- if per_local_day %}
left join stg_projects as p on p.project_id = d.project_id
group by d.project_id, cast(d.occurred_at at time zone coalesce(p.timezone, 'UTC') as date);
{%- else %}
group by d.project_id, d.occurred_at;
{%- endif %}
