"""What `runhub demo` prints at its end: the latest check results, and fresh Data Docs."""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from runhub_pipeline.checks import gx_suites
from runhub_pipeline.checks.core import data_docs_dir, gx_results_dir
from runhub_pipeline.checks.status import asset_graph_of, execution_records, is_completed


@dataclass(frozen=True)
class CheckSummary:
    """Counts over the latest evaluation of every check in the definitions.

    `skipped` are checks whose latest run did not evaluate them (e.g. an upstream blocking check
    failed) or that never ran.
    """

    passed: int
    warned: int
    failed: int
    skipped: int
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.passed + self.warned + self.failed + self.skipped

    def render(self) -> str:
        lines = [
            f"data-quality checks: {self.passed} passed, {self.warned} warned,"
            f" {self.failed} failed, {self.skipped} not evaluated"
        ]
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


def check_summary(instance: dg.DagsterInstance, definitions: dg.Definitions | Any) -> CheckSummary:
    """Summarize the latest evaluation of every check of `definitions` (or a repository)."""
    keys = sorted(asset_graph_of(definitions).asset_check_keys)
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(keys)
    passed = warned = failed = skipped = 0
    problems: list[str] = []
    for key in keys:
        record = latest.get(key)
        evaluation = record.evaluation if record is not None and is_completed(record) else None
        if evaluation is None:
            skipped += 1
            continue
        if evaluation.passed:
            passed += 1
            continue
        is_warning = evaluation.severity == dg.AssetCheckSeverity.WARN
        warned += is_warning
        failed += not is_warning
        label = "WARN " if is_warning else "ERROR"
        problems.append(f"{label} {key.to_user_string()}: {evaluation.description or ''}")
    problems.sort(key=lambda line: (not line.startswith("ERROR"), line))
    return CheckSummary(passed, warned, failed, skipped, problems)


@dataclass(frozen=True)
class CheckExecution:
    """One past evaluation of a check, as the Dagster instance keeps it."""

    run_id: str
    evaluated_at: datetime
    outcome: str  # passed, warned, failed, or not evaluated (planned, never finished)
    description: str | None
    metadata: dict[str, Any]


def check_history(
    instance: dg.DagsterInstance, table: str, check_name: str, limit: int = 20
) -> list[CheckExecution]:
    """The check's outcome in each of the latest `limit` runs that planned it, newest first."""
    key = dg.AssetCheckKey(dg.AssetKey(table), check_name)
    by_run: dict[str, Any] = {}
    for record in execution_records(instance, key):
        known = by_run.get(record.run_id)
        if known is None:
            if len(by_run) == limit:
                break
            by_run[record.run_id] = record
        elif is_completed(record) and not is_completed(known):
            by_run[record.run_id] = record
    return [_execution(record) for record in by_run.values()]


def _execution(record: Any) -> CheckExecution:
    evaluation = record.evaluation if is_completed(record) else None
    if evaluation is None:
        outcome, description, metadata = "not evaluated", None, {}
    else:
        warned = evaluation.severity == dg.AssetCheckSeverity.WARN
        outcome = "passed" if evaluation.passed else "warned" if warned else "failed"
        description = evaluation.description
        metadata = {k: v.value for k, v in evaluation.metadata.items()}
    return CheckExecution(
        run_id=record.run_id,
        evaluated_at=datetime.fromtimestamp(record.create_timestamp, UTC),
        outcome=outcome,
        description=description,
        metadata=metadata,
    )


def build_data_docs(home: Path) -> Path:
    """Build the Data Docs from the saved validation results now; returns index.html."""
    docs = data_docs_dir(home)
    index = gx_suites.build_data_docs(docs, gx_results_dir(home), wait=True)
    return index if index is not None else gx_suites.data_docs_index(docs)
