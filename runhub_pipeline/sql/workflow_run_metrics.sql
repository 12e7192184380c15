-- workflow_run_metrics: one row per project (of stg_projects), as of the watermark T; time column
-- created_at of the app's workflow_runs (snapshot raw_workflow_runs, every column text).
-- Counts runs by status among those created in [T - 7 d, T), and stuck_runs: runs `running` whose
-- lease expired before T, whenever created (CONTRACT §5). Small: fully recomputed every window.

create table if not exists workflow_run_metrics (
    project_id varchar not null,
    queued bigint not null,
    running bigint not null,
    succeeded bigint not null,
    failed bigint not null,
    stuck_runs bigint not null
);

delete from workflow_run_metrics;

insert into workflow_run_metrics (project_id, queued, running, succeeded, failed, stuck_runs)
with runs as (
    select
        nullif(trim(r.project_id), '') as project_id,
        lower(nullif(trim(r.status), '')) as status,
        runhub_try_timestamptz(r.created_at) as created_at,
        runhub_try_timestamptz(r.lease_expires_at) as lease_expires_at
    from raw_workflow_runs as r
),
recent as (
    select
        r.project_id,
        r.status,
        r.lease_expires_at,
        r.created_at >= cast($watermark as timestamptz) - interval '7 days'
            and r.created_at < cast($watermark as timestamptz) as is_recent
    from runs as r
)
select
    p.project_id,
    cast(count(*) filter (where r.is_recent and r.status = 'queued') as bigint) as queued,
    cast(count(*) filter (where r.is_recent and r.status = 'running') as bigint) as running,
    cast(count(*) filter (where r.is_recent and r.status = 'succeeded') as bigint) as succeeded,
    cast(count(*) filter (where r.is_recent and r.status = 'failed') as bigint) as failed,
    cast(
        count(*) filter (
            where r.status = 'running' and r.lease_expires_at < cast($watermark as timestamptz)
        ) as bigint
    ) as stuck_runs
from stg_projects as p
left join recent as r on r.project_id = p.project_id
group by p.project_id;
