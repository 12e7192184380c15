-- Clears a snapshot of a small app table (projects, workflow runs, e-mails) before it is re-read.
delete from {{ raw_table }};
