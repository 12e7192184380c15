-- recover_abandoned recipients of one project: one row per address (email_norm) with a checkout
-- that is `abandoned` as of the warehouse watermark and started in [$window_start, $window_end)
-- (the wall-clock window of CONTRACT §7). qualified_at is the earliest such checkout's start;
-- session_ids lets the sender recognise a payment made since under the same session.
select
    c.email_norm as email,
    min(c.started_at) as qualified_at,
    array_agg(distinct c.session_id) filter (where c.session_id is not null) as session_ids
from fct_checkouts as c
where c.project_id = $project_id
    and c.status = 'abandoned'
    and c.email_norm is not null
    and c.started_at >= $window_start
    and c.started_at < $window_end
group by c.email_norm
order by qualified_at, email
