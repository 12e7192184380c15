"""Running the pipeline through the Dagster instance at DAGSTER_HOME, outside `dagster dev`.

`runhub backfill` and `runhub demo` execute the window job in this process (no daemon needed)
but record the run, its materializations and check results in the same instance that
`dagster dev` shows.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import dagster as dg
import yaml

from runhub_pipeline.definitions import WINDOW_JOB, build_definitions
from runhub_pipeline.partitions import partition_key, window_run_selection
from runhub_pipeline.resources.warehouse import exclusive_lock
from runhub_pipeline.settings import Settings, path_problem

if TYPE_CHECKING:  # dagster's own error record, from the package dagster depends on
    from dagster_shared.error import SerializableErrorInfo

# The embedded instance: SQLite storage under DAGSTER_HOME and queued runs. No pool limit: a run
# killed with -9 would keep its pool slot until a daemon's run monitoring frees it, and the next
# `runhub backfill` would wait forever; the warehouse's own writer lock already makes writers take
# turns. Production (deploy/dagster.yaml) sets the pool and runs the daemon.
EMBEDDED_DAGSTER_YAML = """\
instance_class:
  module: runhub_pipeline.instance
  class: RunhubDagsterInstance
concurrency:
  runs:
    max_concurrent_runs: 4
telemetry:
  enabled: false
"""


# The run's log belongs in the Dagster UI, not on the terminal of `runhub backfill`: a failed step
# printed ~100 lines of stack trace there. The command says in one line which step failed and why
# (`RunOutcome.failure`), with the run id to look up.
QUIET_LOGS = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


@dataclass(frozen=True)
class RunOutcome:
    success: bool
    run_id: str
    failure: str | None


# A single-run backfill otherwise logs one "materialization planned" event per window and asset
# before the first step starts (minutes of SQLite writes for a 14-day range); with this, one event
# per asset carries the whole partition range. Dagster reads it where runs are created, so
# `dagster dev` and the daemon need it in their environment too (README, "Partitions").
PLANNED_EVENTS_SETTING = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"
# A range run records one materialization per window and partitioned asset. dagster-postgres writes
# them in batches of this size (one INSERT instead of thousands); the SQLite storage ignores it.
EVENT_BATCH_SETTING = "DAGSTER_EVENT_BATCH_SIZE"


INSTANCE_LOCK = ".runhub-instance.lock"
INSTANCE_LOCK_TIMEOUT_SECONDS = 300.0


class DagsterHomeError(RuntimeError):
    """DAGSTER_HOME cannot be created or written; one line for the user."""


def dagster_instance(settings: Settings) -> dg.DagsterInstance:
    """The persistent instance at DAGSTER_HOME, created with the embedded config if new."""
    os.environ.setdefault(PLANNED_EVENTS_SETTING, "true")
    os.environ.setdefault(EVENT_BATCH_SETTING, "1000")
    home = settings.dagster_home
    config = home / "dagster.yaml"
    try:
        home.mkdir(parents=True, exist_ok=True)
        # Processes that start on a fresh home at once would each write the config, create the
        # storage's tables and stamp its schema version, and all but one fail ("UNIQUE constraint
        # failed: alembic_version.version_num"). They set the home up one at a time instead.
        with exclusive_lock(home / INSTANCE_LOCK, INSTANCE_LOCK_TIMEOUT_SECONDS):
            if not config.exists():
                config.write_text(EMBEDDED_DAGSTER_YAML)
            return dg.DagsterInstance.from_config(str(home))
    except OSError as error:
        # DAGSTER_HOME may live outside RUNHUB_HOME, so the CLI's home check does not cover it.
        raise DagsterHomeError(
            f"DAGSTER_HOME {home} is not writable: {path_problem(error)}"
        ) from None
    except (yaml.YAMLError, dg.DagsterError) as error:
        raise DagsterHomeError(
            f"{config} is not a usable Dagster instance config: {_config_problem(error)}"
        ) from None


def _config_problem(error: Exception) -> str:
    """What is wrong with a dagster.yaml, in one line: Dagster's own messages run to pages (the
    whole expected schema, a stack trace)."""
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(error, dg.DagsterInvalidConfigError) and error.errors:
        message = error.errors[0].message
        if "PostProcessingError: " in message:  # an `env:` value: the variable is not set
            message = message.split("PostProcessingError: ", 1)[1].split(". ", 1)[0]
        return message.split(" Expected:", 1)[0].splitlines()[0]
    return next((line.strip() for line in str(error).splitlines() if line.strip()), repr(error))


def execute_window_range(
    settings: Settings, first_window: datetime, last_window: datetime
) -> RunOutcome:
    """One run over the windows whose starts are `first_window` .. `last_window` (inclusive)."""
    definitions = build_definitions(settings)
    job = definitions.resolve_job_def(WINDOW_JOB)
    key, tags = window_run_selection(partition_key(first_window), partition_key(last_window))
    with dagster_instance(settings) as instance:
        result = job.execute_in_process(
            instance=instance,
            partition_key=key,
            tags=tags,
            raise_on_error=False,
            run_config=QUIET_LOGS,
        )
        return run_outcome(result)


def run_outcome(result: dg.ExecuteInProcessResult) -> RunOutcome:
    return RunOutcome(success=result.success, run_id=result.run_id, failure=_first_failure(result))


def _step_error(error: SerializableErrorInfo) -> str:
    """The first line of what the step raised: Dagster wraps it in its own "Error occurred while
    executing op" error, which says nothing of the cause."""
    while error.cause is not None and (error.cls_name or "").startswith("Dagster"):
        error = error.cause
    line = next((text.strip() for text in error.message.splitlines() if text.strip()), "")
    # "package.module.SomeError: what happened" -> "what happened"
    qualified_name, _, what = line.partition(": ")
    if what and qualified_name.rsplit(".", 1)[-1] == error.cls_name:
        return what
    return line or error.cls_name or "unknown error"


def _failed_blocking_checks(result: dg.ExecuteInProcessResult, step_key: str) -> str | None:
    """What the step's failed blocking checks found, named as `runhub accept-check` takes them.

    Dagster's own error says only how many failed on its first line and lists bare names on the
    next ones, so a one-line report of it named no check at all.
    """
    evaluations = [
        event.asset_check_evaluation_data
        for event in result.all_events
        if event.step_key == step_key
        and event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ]
    failed = [
        evaluation
        for evaluation in evaluations
        if not evaluation.passed
        and evaluation.blocking
        and evaluation.severity == dg.AssetCheckSeverity.ERROR
    ]
    if not failed:
        return None
    return "; ".join(
        f"blocking check {evaluation.asset_key.to_user_string()}:{evaluation.check_name} failed"
        + (f": {' '.join(evaluation.description.split())}" if evaluation.description else "")
        for evaluation in failed
    )


def _first_failure(result: dg.ExecuteInProcessResult) -> str | None:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None and event.step_key:
            error = event.step_failure_data.error
            cause = _failed_blocking_checks(result, event.step_key) or (
                _step_error(error) if error else "unknown error"
            )
            return f"step {event.step_key}: {cause}"
    return None if result.success else "the run failed"
