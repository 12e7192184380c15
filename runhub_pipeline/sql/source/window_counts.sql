-- Source rows per (table, 15-minute received_at window) in [since, until), both event tables in
-- one grouped query: the late-commit detector and the reconciliation check compare these counts
-- with ingest_ledger. window_key is 'YYYY-MM-DDTHH:MM' on both dialects.
{% for table in tables %}
select
    '{{ table }}' as source_table,
{%- if dialect == "postgresql" %}
    to_char(
        date_bin('15 minutes', received_at, timestamptz '2000-01-01'), 'YYYY-MM-DD"T"HH24:MI'
    ) as window_key,
{%- else %}
    substr(received_at, 1, 14)
        || printf('%02d', cast(substr(received_at, 15, 2) as integer) / 15 * 15) as window_key,
{%- endif %}
    count(*) as source_rows
from {{ table }}
where received_at >= :since and received_at < :until
group by window_key
{{ "union all" if not loop.last }}
{%- endfor %}
