"""Deterministic demo data for the app database (`runhub simulate`, CONTRACT §1 and §3).

Same spec, same rows: every draw comes from numpy's PCG64 seeded with (seed, project number,
stream), so `p0007` is the same project whatever `--projects` says, and nothing reads the clock.
Rows are generated one project at a time with numpy and polars (no per-event Python loop) and
loaded in one transaction: executemany on SQLite, COPY on PostgreSQL.

Re-running is idempotent: the transaction first deletes what an earlier run could have written,
i.e. every row of projects `p0001..pNNNN` in the app tables (`workflow_sends` included, so the
projects are replaced as a whole) and every event or e-mail row whose id lies in the generated id
range (which catches the rows deliberately written with an unknown or blank project id). Project
k owns ids `[k * ID_BLOCK, (k + 1) * ID_BLOCK)` of `business_events`, `inhouse_analytics_events`
and `inhouse_emails`, numbered in `received_at` (`created_at`) order within the project.

Modules, in the order a project is generated: `spec` (what is asked), `projects` and `clock`
(personas, time zones), `analytics` and `business` (what happens, drawn with the probabilities of
`behaviour` into the numeric `parts`), `workflows` and `emails` (what was sent), `render`,
`business_rows` and `quarantine` (how the app stored it, bad rows included), `loading` (bulk
insert) and `generate` (one transaction, progress lines).
"""

from runhub_pipeline.simulate.generate import simulate
from runhub_pipeline.simulate.spec import (
    ANALYTICS_RULES,
    BUSINESS_RULES,
    ID_BLOCK,
    SimulationError,
    SimulationResult,
    SimulationSpec,
    project_id,
)

__all__ = [
    "ANALYTICS_RULES",
    "BUSINESS_RULES",
    "ID_BLOCK",
    "SimulationError",
    "SimulationResult",
    "SimulationSpec",
    "project_id",
    "simulate",
]
