-- Which of $emails appear in one project's own staged business events: one row per address, with
-- its first event's time. Addresses a run names explicitly are mailed only if they are here.
select
    e.email_norm as email,
    min(e.occurred_at) as qualified_at
from stg_business_events as e
where e.project_id = $project_id
    and e.email_norm in (select unnest($emails))
group by e.email_norm
order by qualified_at, email
