-- raw_projects / raw_workflow_runs / raw_inhouse_emails: the app table as read, every column as
-- text. Appends one Arrow batch (`_source_batch`).
insert into {{ raw_table }}
select
{%- for column in columns %}
    b.{{ column }}{{ "," if not loop.last }}
{%- endfor %}
from _source_batch as b;
