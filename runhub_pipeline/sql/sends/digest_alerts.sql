-- Daily digest alert counts, all due projects in one pass: alert_counts_15min summed over each
-- project's reported local day, [$day_starts, $day_ends) in UTC (parallel lists with $project_ids).
with due as (
    select
        unnest($project_ids) as project_id,
        unnest($day_starts) as day_start,
        unnest($day_ends) as day_end
)
select
    d.project_id,
    cast(coalesce(sum(a.payment_failed), 0) as bigint) as payment_failed,
    cast(coalesce(sum(a.checkout_started), 0) as bigint) as checkout_started,
    cast(coalesce(sum(a.abandoned_checkouts), 0) as bigint) as abandoned_checkouts
from due as d
left join alert_counts_15min as a
    on a.project_id = d.project_id
    and a.bucket_start >= d.day_start
    and a.bucket_start < d.day_end
group by d.project_id
