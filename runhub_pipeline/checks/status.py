"""Did the latest blocking checks of the data pass? The gate the send sensors ask before acting.

The answer comes from the Dagster instance, the store the checks already write their results to
(and that the UI shows), so there is no second copy of the results to keep in step. For every
blocking check of every table that has been materialized:

- the latest completed evaluation must target the table's latest materialization (the data its
  run wrote; published at the end of that run); a newer materialization whose checks have not
  finished is `pending`;
- that evaluation must have passed, or failed with WARN severity only; an ERROR failure is
  `blocked`, until a later run rewrites the table and its checks pass. Checks scoped to a run's
  windows re-check the windows they failed on (`checks.rechecks`), so a run of other windows does
  not re-open the gate while a failed window is still wrong.

Checks of tables never materialized are ignored (there is no data to act on). Only the instance
is read: no warehouse connection and no Great Expectations import, so it is cheap in a sensor.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import dagster as dg

GateState = Literal["passed", "pending", "blocked"]
_COMPLETED = ("SUCCEEDED", "FAILED")
_PAGE = 500
_FIRST_PAGE = 5


@dataclass(frozen=True)
class CheckProblem:
    check: str
    state: Literal["pending", "blocked"]
    detail: str
    run_id: str | None

    def describe(self) -> str:
        return f"{self.check}: {self.detail}"


@dataclass(frozen=True)
class CheckGate:
    """The verdict over a set of blocking checks; `ok` means the sensors may act."""

    checks: int
    problems: tuple[CheckProblem, ...]

    @property
    def state(self) -> GateState:
        if any(p.state == "blocked" for p in self.problems):
            return "blocked"
        return "pending" if self.problems else "passed"

    @property
    def ok(self) -> bool:
        return not self.problems

    def reason(self) -> str:
        """One line for a sensor's SkipReason."""
        if self.ok:
            return f"all {self.checks} blocking checks passed on the latest data"
        blocked = [p for p in self.problems if p.state == self.state]
        listed = "; ".join(p.describe() for p in blocked[:3])
        more = f" (+{len(blocked) - 3} more)" if len(blocked) > 3 else ""
        if self.state == "blocked":
            return f"blocking data-quality checks failed: {listed}{more}"
        return f"data-quality checks of the latest data have not finished: {listed}{more}"


def asset_graph_of(definitions: dg.Definitions | Any) -> Any:
    """The asset graph of a `Definitions` or a `RepositoryDefinition` (a sensor's
    `context.repository_def`)."""
    if isinstance(definitions, dg.Definitions):
        return definitions.resolve_asset_graph()
    return definitions.asset_graph


def blocking_check_keys_of(definitions: dg.Definitions | Any) -> list[dg.AssetCheckKey]:
    graph = asset_graph_of(definitions)
    return sorted(k for k in graph.asset_check_keys if graph.get(k).blocking)


def blocking_checks_gate(
    instance: dg.DagsterInstance,
    definitions: dg.Definitions | Any,
    tables: Iterable[str] | None = None,
) -> CheckGate:
    """The gate over the blocking checks of `definitions`, optionally of some tables only."""
    keys = blocking_check_keys_of(definitions)
    if tables is not None:
        wanted = {dg.AssetKey(t) for t in tables}
        keys = [k for k in keys if k.asset_key in wanted]
    return check_gate(instance, keys)


def check_gate(instance: dg.DagsterInstance, check_keys: Iterable[dg.AssetCheckKey]) -> CheckGate:
    keys = list(check_keys)
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    materializations: dict[dg.AssetKey, Any] = {}
    problems: list[CheckProblem] = []
    considered = 0
    for key in keys:
        if key.asset_key not in materializations:
            found = instance.fetch_materializations(key.asset_key, limit=1).records
            materializations[key.asset_key] = found[0] if found else None
        materialization = materializations[key.asset_key]
        if materialization is None:
            continue
        considered += 1
        problem = _judge(instance, key, materialization, latest.get(key))
        if problem is not None:
            problems.append(problem)
    return CheckGate(considered, tuple(problems))


def _judge(
    instance: dg.DagsterInstance, key: dg.AssetCheckKey, materialization: Any, record: Any
) -> CheckProblem | None:
    name = key.to_user_string()
    if record is None:
        return CheckProblem(name, "pending", "never evaluated", None)
    if not is_completed(record):
        run = instance.get_run_by_id(record.run_id)
        if run is not None and not run.is_finished:
            return CheckProblem(name, "pending", "evaluation in progress", record.run_id)
        record = latest_completed(instance, key)
        if record is None:
            return CheckProblem(name, "pending", "never evaluated", None)
    evaluation: dg.AssetCheckEvaluation = record.evaluation
    if not _targets(evaluation, record, materialization):
        run = instance.get_run_by_id(materialization.run_id)
        running = run is not None and not run.is_finished
        detail = "evaluation in progress" if running else "latest data not evaluated yet"
        return CheckProblem(name, "pending", detail, materialization.run_id)
    if evaluation.passed or evaluation.severity == dg.AssetCheckSeverity.WARN:
        return None
    return CheckProblem(
        name, "blocked", evaluation.description or "failed with ERROR severity", record.run_id
    )


def latest_completed(instance: dg.DagsterInstance, key: dg.AssetCheckKey) -> Any:
    """The newest execution record of a check that carries an evaluation, or None."""
    return next((r for r in execution_records(instance, key) if is_completed(r)), None)


def is_completed(record: Any) -> bool:
    """Whether an execution record carries an evaluation (not only the plan to run it)."""
    return record.status.value in _COMPLETED


def execution_records(
    instance: dg.DagsterInstance, key: dg.AssetCheckKey, page: int = _PAGE
) -> Iterator[Any]:
    """Every execution record of a check, newest first, read page by page.

    On an instance other than `RunhubDagsterInstance` (tests' instances, a home configured
    before it), a range run leaves one unresolved "planned" record per window beside its one
    evaluation, so a fixed-size page may hold no evaluation at all. The first page is small:
    after a window run the newest record is usually the evaluation, and every record read is
    deserialized.
    """
    cursor = None
    limit = _FIRST_PAGE
    while True:
        records = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=limit, cursor=cursor
        )
        yield from records
        if len(records) < limit:
            return
        cursor = records[-1].id
        limit = page


def _targets(evaluation: dg.AssetCheckEvaluation, record: Any, materialization: Any) -> bool:
    """Whether the evaluation judged the asset's latest materialization."""
    target = evaluation.target_materialization_data
    if target is not None:
        return bool(target.storage_id == materialization.storage_id)
    # Dagster finds no target when a single-partition run checks an unpartitioned table.
    return bool(record.event is not None and record.event.timestamp >= materialization.timestamp)
