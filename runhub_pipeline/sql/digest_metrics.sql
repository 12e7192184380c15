-- digest_metrics: one row per (project_id, locale, status) of the `daily_digest` e-mails created
-- in [T - 30 d, T), as of the watermark T; time column created_at of the app's inhouse_emails
-- (snapshot raw_inhouse_emails, every column text). Digest delivery health (CONTRACT §5):
-- `emails` counts the rows, `delivery_rate` = sent / (sent + failed + bounced) per
-- (project_id, locale), repeated on each of its rows, NULL when that denominator is 0.
-- Locale normalized as in §6; a blank status counts as 'unknown'. Small: fully recomputed.

create table if not exists digest_metrics (
    project_id varchar not null,
    locale varchar not null,
    status varchar not null,
    emails bigint not null,
    delivery_rate double
);

delete from digest_metrics;

insert into digest_metrics (project_id, locale, status, emails, delivery_rate)
with digests as (
    select
        nullif(trim(m.project_id), '') as project_id,
        case
            when lower(split_part(replace(trim(m.locale), '_', '-'), '-', 1))
                in ('en', 'ar', 'fr', 'es', 'de')
                then lower(split_part(replace(trim(m.locale), '_', '-'), '-', 1))
            else 'en'
        end as locale,
        coalesce(lower(nullif(trim(m.status), '')), 'unknown') as status,
        runhub_try_timestamptz(m.created_at) as created_at
    from raw_inhouse_emails as m
    where lower(trim(m.template_name)) = 'daily_digest'
),
counted as (
    select
        d.project_id,
        d.locale,
        d.status,
        count(*) as emails
    from digests as d
    join stg_projects as p on p.project_id = d.project_id
    where d.created_at >= cast($watermark as timestamptz) - interval '30 days'
        and d.created_at < cast($watermark as timestamptz)
    group by d.project_id, d.locale, d.status
),
rates as (
    select
        c.project_id,
        c.locale,
        cast(coalesce(sum(c.emails) filter (where c.status = 'sent'), 0) as double)
            / nullif(sum(c.emails) filter (where c.status in ('sent', 'failed', 'bounced')), 0)
            as delivery_rate
    from counted as c
    group by c.project_id, c.locale
)
select
    c.project_id,
    c.locale,
    c.status,
    cast(c.emails as bigint) as emails,
    r.delivery_rate
from counted as c
join rates as r on r.project_id = c.project_id and r.locale = c.locale;
