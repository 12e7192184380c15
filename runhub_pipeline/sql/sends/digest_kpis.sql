-- Daily digest KPIs, all due projects in one pass: the business_kpi_daily rows of each project's
-- local days [$first_days, $reported_days] (the reported day, the day before it, the same weekday
-- a week earlier and the rest of the 14-day chart; a missing row means zeros). The three lists
-- are parallel; Jinja only lists the KPI columns.
with due as (
    select
        unnest($project_ids) as project_id,
        unnest($first_days) as first_day,
        unnest($reported_days) as reported_day
)
select
    k.project_id,
    k.day,
{%- for column in columns %}
    k.{{ column }}{{ "," if not loop.last }}
{%- endfor %}
from due as d
join business_kpi_daily as k
    on k.project_id = d.project_id
    and k.day >= d.first_day
    and k.day <= d.reported_day
order by k.project_id, k.day
