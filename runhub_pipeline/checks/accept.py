"""Accepting a failed check as it is: the operator's way out of a failure that cannot be fixed.

A window-scoped check that failed with ERROR keeps failing until its windows pass
(`checks.rechecks`); when the source cannot be fixed (a partner's export really held 6 % garbage
that day), an operator accepts the failure with a reason. The acceptance is recorded in Dagster's
own check history as a passing evaluation of the check, with the reason and the accepted failure
in its metadata and no failed scopes: the gate opens, and the next run re-checks only its own
windows. Nothing else changes; the history keeps the failure and who accepted it why.
"""

from dataclasses import dataclass
from typing import Any

import dagster as dg

from runhub_pipeline.checks.rechecks import FAILED_SCOPES
from runhub_pipeline.checks.status import asset_graph_of, latest_completed


class AcceptError(ValueError):
    """The check does not exist or has no failed evaluation to accept; one line for the user."""


@dataclass(frozen=True)
class AcceptedFailure:
    check: str
    failed_run_id: str
    failure: str


def accept_failure(
    instance: dg.DagsterInstance, definitions: dg.Definitions | Any, check: str, reason: str
) -> AcceptedFailure:
    """Record that the latest failure of `check` ("table:check_name") is accepted for `reason`."""
    table, _, name = check.partition(":")
    key = dg.AssetCheckKey(dg.AssetKey(table), name)
    if key not in asset_graph_of(definitions).asset_check_keys:
        raise AcceptError(f"no check named {check!r} (expected table:check_name)")
    if not reason.strip():
        raise AcceptError("--reason must say why the failure is accepted")
    record = latest_completed(instance, key)
    evaluation: dg.AssetCheckEvaluation | None = record.evaluation if record else None
    if record is None or evaluation is None or evaluation.passed:
        raise AcceptError(f"{check} has no failed evaluation to accept")
    failure = evaluation.description or "failed"
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=key.asset_key,
            check_name=name,
            passed=True,
            severity=evaluation.severity,
            blocking=evaluation.blocking,
            description=f"failure accepted: {reason.strip()}",
            metadata={
                FAILED_SCOPES: dg.MetadataValue.json([]),
                "accepted_reason": dg.MetadataValue.text(reason.strip()),
                "accepted_failure": dg.MetadataValue.text(failure),
                "accepted_run_id": dg.MetadataValue.text(record.run_id),
            },
        )
    )
    return AcceptedFailure(check, record.run_id, failure)
