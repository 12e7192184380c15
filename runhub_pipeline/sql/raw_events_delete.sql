-- Clears the raw rows of the ingest windows [$window_start, $window_end) before they are re-read.
delete from {{ raw_table }}
where ingest_window_start >= $window_start and ingest_window_start < $window_end;
