-- ingest_ledger: one row per (source_table, 15-minute ingest window), grain (source_table,
-- window_start). Reset by staging, in the transaction that stages the windows: every window of
-- [$window_start, $window_end) gets the count of raw rows read for it, zero included, so the
-- late-commit sensor can compare counts and the watermark moves past empty windows; the staging
-- models then fill in where the rows went. A run killed after ingest but before staging leaves
-- the old ledger, whose counts no longer match the source, so the window is read again.

delete from ingest_ledger
where source_table = $source_table
    and window_start >= $window_start and window_start < $window_end;

insert into ingest_ledger (
    source_table, window_start, source_rows, staged, duplicates, quarantined, ingested_at,
    staged_at
)
select
    $source_table as source_table,
    w.window_start,
    coalesce(c.source_rows, 0) as source_rows,
    0 as staged,
    0 as duplicates,
    0 as quarantined,
    $staged_at as ingested_at,
    null as staged_at
from (
    select unnest(generate_series(
        $window_start::timestamptz, $window_end::timestamptz - interval 15 minutes,
        interval 15 minutes
    )) as window_start
) as w
left join (
    select r.ingest_window_start, count(*) as source_rows
    from {{ raw_table }} as r
    where r.ingest_window_start >= $window_start and r.ingest_window_start < $window_end
    group by r.ingest_window_start
) as c on c.ingest_window_start = w.window_start;
