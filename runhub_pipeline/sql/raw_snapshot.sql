-- raw_projects / raw_workflow_runs / raw_inhouse_emails: rows read from the app table (all of
-- it, or the rows changed since the last read), every column as text. They replace the copy's
-- rows of the same key. The Arrow stream `_source_batch` can be read once, so it is kept first.
create or replace temp table _app_rows as
select
{%- for column in columns %}
    b.{{ column }}{{ "," if not loop.last }}
{%- endfor %}
from _source_batch as b;

delete from {{ raw_table }} where {{ key }} in (select {{ key }} from _app_rows);

insert into {{ raw_table }} ({{ columns | join(", ") }})
select {{ columns | join(", ") }} from _app_rows;

drop table _app_rows;
