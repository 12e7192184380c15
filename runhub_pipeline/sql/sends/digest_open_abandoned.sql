-- Daily digest abandoned checkouts, all due projects in one pass: checkouts `abandoned` as of the
-- watermark that started in [$open_since, $now) (still recoverable, CONTRACT §5 abandoned_open),
-- and how many of them started in [$recent_since, $now).
select
    c.project_id,
    count(*) as open_abandoned,
    count(*) filter (where c.started_at >= $recent_since) as recent_abandoned
from fct_checkouts as c
where c.project_id in (select unnest($project_ids))
    and c.status = 'abandoned'
    and c.started_at >= $open_since
    and c.started_at < $now
group by c.project_id
