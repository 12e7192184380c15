"""(b, c) The full backfill as one range run, against the extraction limit, and its peak memory.

The backfill is `runhub backfill` in a subprocess (what an operator runs), its process tree's RSS
sampled every ~100 ms. The extraction limit is `COPY (SELECT <the columns ingestion reads, as
text> FROM business_events UNION ALL … inhouse_analytics_events) TO STDOUT` of the same rows,
through psycopg 3 to nowhere (`bench.driver_read.copy_devnull`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime

from bench.driver_read import copy_devnull, source_query
from bench.runlog import RunTimings, run_timings
from bench.workload import BenchHome, count_events, run_runhub
from runhub_pipeline.assets.ingest import EVENT_SOURCES

_RUN_ID = re.compile(r"backfill run (\S+) succeeded")


@dataclass(frozen=True)
class BackfillSample:
    seconds: float
    """Wall time of the `runhub backfill` command (imports, planning, run)."""
    events: int
    peak_rss: int
    timings: RunTimings


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%MZ")


def measure_backfill(home: BenchHome, start: datetime, end: datetime) -> BackfillSample:
    """Backfill the windows starting in [start, end) of a fresh home as one run."""
    from runhub_pipeline.orchestration import dagster_instance
    from runhub_pipeline.settings import Settings

    events = sum(count_events(home.app_db_url, start, end).values())
    result = run_runhub(
        home,
        ["backfill", f"--start={iso(start)}", f"--end={iso(end)}"],
        "backfill",
        sample_memory=True,
    )
    match = _RUN_ID.search(result.output)
    if match is None:
        raise RuntimeError(f"no run id in the output of runhub backfill:\n{result.output}")
    with home.activated():
        settings = Settings.from_env(home.environ())
        with dagster_instance(settings) as instance:
            timings = run_timings(instance, match.group(1))
    return BackfillSample(result.seconds, events, result.peak_rss, timings)


def copy_limit_sql(start: datetime, end: datetime) -> str:
    """Both event tables' rows received in [start, end), the columns ingestion reads, as text;
    the shorter analytics row is padded with NULLs so that one COPY streams both."""
    selects = {
        table: source_query(table) for table in ("business_events", "inhouse_analytics_events")
    }
    widths = {table: len(EVENT_SOURCES[table].columns) for table in selects}
    width = max(widths.values())
    parts = []
    for table, sql in selects.items():
        pad = "".join(f", null::text as pad{i}" for i in range(width - widths[table]))
        parts.append(
            f"select s.*{pad} from ({sql}) as s"
            f" where s.received_at >= '{start.isoformat()}' and s.received_at < '{end.isoformat()}'"
        )
    return "\nunion all\n".join(parts)


def measure_copy_limit(url: str, start: datetime, end: datetime) -> float:
    sql = copy_limit_sql(start, end)
    started = time.perf_counter()
    copy_devnull(url, sql)
    return time.perf_counter() - started
