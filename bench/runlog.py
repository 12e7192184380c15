"""Where a Dagster run's time went, read from its event log (`instance.all_logs(run_id)`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import dagster as dg

_STEP_ENDS = {"STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"}
_RUN_STARTS = {"PIPELINE_START", "RUN_START"}
_RUN_ENDS = {"PIPELINE_SUCCESS", "RUN_SUCCESS", "PIPELINE_FAILURE", "RUN_FAILURE"}


@dataclass(frozen=True)
class RunTimings:
    """Seconds between events of one run, all from the event log's own timestamps."""

    first_event_to_run_start: float
    """Planning and launch: the run's first record (materializations planned) to RUN_START."""
    run_start_to_first_step: float
    steps: float
    """First STEP_START to the last step's end: the window's work, checks included."""
    last_step_to_run_end: float
    per_step: dict[str, float] = field(default_factory=dict)
    events: int = 0

    @property
    def launch(self) -> float:
        return self.first_event_to_run_start + self.run_start_to_first_step

    @property
    def total(self) -> float:
        return self.launch + self.steps + self.last_step_to_run_end


def _kind(entry: dg.EventLogEntry) -> str | None:
    return entry.dagster_event.event_type_value if entry.dagster_event else None


def run_timings(instance: dg.DagsterInstance, run_id: str) -> RunTimings:
    entries = sorted(instance.all_logs(run_id), key=lambda entry: entry.timestamp)
    if not entries:
        raise RuntimeError(f"run {run_id} has no event log")
    first = entries[0].timestamp
    run_start = next((e.timestamp for e in entries if _kind(e) in _RUN_STARTS), first)
    run_end = next((e.timestamp for e in reversed(entries) if _kind(e) in _RUN_ENDS), None)
    starts: dict[str, float] = {}
    per_step: dict[str, float] = {}
    step_ends: list[float] = []
    for entry in entries:
        kind, key = _kind(entry), entry.step_key
        if key is None:
            continue
        if kind == "STEP_START":
            starts[key] = entry.timestamp
        elif kind in _STEP_ENDS:
            step_ends.append(entry.timestamp)
            if key in starts:
                per_step[key] = entry.timestamp - starts[key]
    first_step = min(starts.values(), default=run_start)
    last_step = max(step_ends, default=first_step)
    return RunTimings(
        first_event_to_run_start=run_start - first,
        run_start_to_first_step=first_step - run_start,
        steps=last_step - first_step,
        last_step_to_run_end=(run_end or last_step) - last_step,
        per_step=per_step,
        events=len(entries),
    )
