-- Auto-recovery sensor, all projects in one pass: per project with a checkout `abandoned` as of the
-- watermark and started in [$window_start, $window_end), how many such checkouts (with an address)
-- and when the newest of them became visible as abandoned: its start + $abandoned_after, or its
-- receipt when the event arrived later than that.
select
    c.project_id,
    count(*) as abandoned,
    max(
        greatest(c.started_at + $abandoned_after, e.received_at)
    ) as newest_visible_at
from fct_checkouts as c
join stg_business_events as e on e.event_id = c.checkout_event_id
where c.status = 'abandoned'
    and c.email_norm is not null
    and c.started_at >= $window_start
    and c.started_at < $window_end
group by c.project_id
