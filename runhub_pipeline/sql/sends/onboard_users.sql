-- onboard_users recipients of one project: one row per address (email_norm) of a `lead_created`
-- event that occurred in [$since, $now) and that never made a `payment_succeeded` in this project;
-- qualified_at is the earliest such lead.
select
    e.email_norm as email,
    min(e.occurred_at) as qualified_at
from stg_business_events as e
where e.project_id = $project_id
    and e.event_type = 'lead_created'
    and e.email_norm is not null
    and e.occurred_at >= $since
    and e.occurred_at < $now
    and not exists (
        select 1
        from stg_business_events as p
        where p.project_id = e.project_id
            and p.event_type = 'payment_succeeded'
            and p.email_norm = e.email_norm
    )
group by e.email_norm
order by qualified_at, email
