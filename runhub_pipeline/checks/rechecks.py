"""A failed window stays failed until a later evaluation re-checks it and it passes.

Some checks judge only what one run covered, its windows and the rows it wrote: ledger balances,
source reconciliation, quarantine share, KPI reconciliation and the GX suites. On their own, a run
of another window would pass them and re-open the send gate while the bad window is still wrong.
So an ERROR failure records the scope it failed on (`failed_scopes` in the evaluation's metadata,
which the Dagster instance keeps), and the next evaluation of the same check evaluates those
scopes again, on the current data, besides its own. A scope leaves the list only by passing; until
then the check fails, the run's downstream steps (the publish) are skipped, and the gate
(`checks.status`) stays closed. Only the latest completed evaluation is read, so the cost does not
grow with the check's history.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from runhub_pipeline.checks.core import CheckEnv, CheckScope, Outcome, markdown_table
from runhub_pipeline.settings import parse_utc

FAILED_SCOPES = "failed_scopes"


def blocks(outcome: Outcome) -> bool:
    return not outcome.passed and outcome.severity == "ERROR"


def failed_scopes(metadata: Mapping[str, Any], now: datetime) -> list[CheckScope]:
    """The scopes an earlier evaluation left failing, to be judged again at `now`.

    `metadata` maps names to plain values or to Dagster metadata values (which carry `.value`).
    """
    found = metadata.get(FAILED_SCOPES)
    stored = getattr(found, "value", found) or []
    return [
        CheckScope(
            window_start=parse_utc(item["window_start"]),
            window_end=parse_utc(item["window_end"]),
            run_started_at=parse_utc(item["run_started_at"]),
            now=now,
        )
        for item in stored
    ]


def merged(scopes: Iterable[CheckScope]) -> list[CheckScope]:
    """Overlapping or adjacent scopes as one, so a failure repeated run after run stays one entry.

    The merged scope keeps the earliest `run_started_at`: it covers the rows each part covered.
    """
    result: list[CheckScope] = []
    for scope in sorted(scopes, key=lambda s: (s.window_start, s.window_end)):
        if result and scope.window_start <= result[-1].window_end:
            last = result[-1]
            result[-1] = replace(
                last,
                window_end=max(last.window_end, scope.window_end),
                run_started_at=min(last.run_started_at, scope.run_started_at),
            )
        else:
            result.append(scope)
    return result


def _stored(scope: CheckScope) -> dict[str, str]:
    return {
        "window_start": scope.window_start.isoformat(),
        "window_end": scope.window_end.isoformat(),
        "run_started_at": scope.run_started_at.isoformat(),
    }


def evaluate_with_rechecks(
    evaluate: Callable[[CheckEnv], Outcome], env: CheckEnv, carried: Sequence[CheckScope]
) -> Outcome:
    """Evaluate the run's own scope and every carried failed scope; fail while any fails.

    The result's `failed_scopes` lists what still fails with ERROR (the run's own scope included),
    for the next evaluation to carry on.
    """
    own = evaluate(env)
    rechecked = [
        (scope, evaluate(replace(env, scope=scope, run_id=f"{env.run_id}-recheck-{number}")))
        for number, scope in enumerate(carried, start=1)
    ]
    still = [(scope, outcome) for scope, outcome in rechecked if blocks(outcome)]
    failing = merged([*([env.scope] if blocks(own) else []), *(scope for scope, _ in still)])
    extra: dict[str, Any] = {FAILED_SCOPES: [_stored(scope) for scope in failing]}
    if rechecked:
        extra["rechecked_earlier_failures"] = markdown_table(
            ["scope", "still_fails", "description"],
            [
                (scope.describe(), blocks(outcome), outcome.description)
                for scope, outcome in rechecked
            ],
        )
    if not still:
        return replace(own, metadata={**own.metadata, **extra})
    scope, earlier = still[0]
    if blocks(own):
        return replace(
            own,
            description=f"{own.description}; still failing since an earlier run:"
            f" {earlier.description}",
            metadata={**own.metadata, **extra},
        )
    return Outcome(
        False,
        f"still failing since an earlier run ({scope.describe()}): {earlier.description}",
        metadata={**earlier.metadata, "this_run": own.description, **extra},
    )
