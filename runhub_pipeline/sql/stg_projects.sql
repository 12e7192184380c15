-- stg_projects: one row per project of the app database, grain project_id, refreshed on every
-- ingest. A time zone not in $valid_timezones (Python's zoneinfo list) falls back to UTC and is
-- flagged; a changed time zone or currency marks the whole project for recomputation.

create or replace temporary table _projects_new as
select
    trim(raw.project_id) as project_id,
    nullif(trim(raw.name), '') as name,
    case
        when list_contains($valid_timezones, trim(raw.timezone)) then trim(raw.timezone)
        else 'UTC'
    end as timezone,
    raw.timezone as timezone_raw,
    coalesce(list_contains($valid_timezones, trim(raw.timezone)), false) as is_timezone_valid,
    upper(nullif(trim(raw.currency), '')) as currency,
    nullif(trim(raw.locale), '') as locale,
    case
        when lower(regexp_extract(trim(coalesce(raw.locale, '')), '^[^-_]*'))
            in ('en', 'ar', 'fr', 'es', 'de')
            then lower(regexp_extract(trim(coalesce(raw.locale, '')), '^[^-_]*'))
        else 'en'
    end as locale_norm,
    case
        when regexp_full_match(lower(trim(raw.owner_email)), '[^@\s<>]+@[^@\s<>]+\.[a-z]{2,}')
            then lower(trim(raw.owner_email))
    end as owner_email,
    try_cast(raw.digest_enabled as boolean) as digest_enabled,
    try_cast(raw.digest_hour as integer) as digest_hour,
    try_cast(raw.digest_next_at as timestamptz) as digest_next_at,
    try_cast(raw.auto_recover_abandoned as boolean) as auto_recover_abandoned,
    try_cast(raw.stripe_connected as boolean) as stripe_connected,
    try_cast(raw.tracking_installed as boolean) as tracking_installed,
    try_cast(raw.forms_count as integer) as forms_count,
    try_cast(raw.created_at as timestamptz) as created_at
from raw_projects as raw
where nullif(trim(raw.project_id), '') is not null;

insert into stg_changes (change_seq, source_table, project_id, occurred_at)
select $change_seq as change_seq, 'projects' as source_table, n.project_id, null as occurred_at
from _projects_new as n
join stg_projects as o on o.project_id = n.project_id
where o.timezone is distinct from n.timezone or o.currency is distinct from n.currency;

delete from stg_projects;

insert into stg_projects select * from _projects_new;
