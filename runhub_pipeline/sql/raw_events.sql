-- raw_business_events / raw_analytics_events: one row per source row read, grain id, bucketed by
-- received_at into its ingest window. Appends one Arrow batch (`_source_batch`) read from the
-- app database; the caller deleted the windows' old rows in the same transaction.
insert into {{ raw_table }}
select
    b.id,
    time_bucket(interval 15 minutes, cast(b.received_at as timestamptz)) as ingest_window_start,
    cast(b.received_at as timestamptz) as received_at,
{%- for column in columns %}
    b.{{ column }}{{ "," if not loop.last }}
{%- endfor %}
from _source_batch as b;
