-- send_promo recipients of one project: one row per address (email_norm) of a `lead_created` or
-- `payment_succeeded` event that occurred in [$since, $now); qualified_at is the earliest one.
select
    e.email_norm as email,
    min(e.occurred_at) as qualified_at
from stg_business_events as e
where e.project_id = $project_id
    and e.event_type in ('lead_created', 'payment_succeeded')
    and e.email_norm is not null
    and e.occurred_at >= $since
    and e.occurred_at < $now
group by e.email_norm
order by qualified_at, email
