"""Failed scopes are carried from one evaluation of a check to the next until they pass.

Plain functions, no Dagster: a stand-in check fails on the windows listed in `bad`. The end-to-end
behaviour (runs of other windows keep failing, the gate stays closed) is in test_checks_blocking.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import duckdb

from runhub_pipeline.checks.core import CheckEnv, CheckOptions, CheckScope, Outcome, Severity
from runhub_pipeline.checks.rechecks import (
    FAILED_SCOPES,
    evaluate_with_rechecks,
    failed_scopes,
    merged,
)
from runhub_pipeline.settings import WINDOW
from tests.factories import utc

W1 = utc("2026-03-04 10:15")
W2 = utc("2026-03-04 10:30")
W3 = utc("2026-03-04 10:45")
NOW = utc("2026-03-04 12:00")


def _scope(start: datetime, started: str, windows: int = 1) -> CheckScope:
    return CheckScope(start, start + windows * WINDOW, utc(started), NOW)


def _env(scope: CheckScope) -> CheckEnv:
    options = CheckOptions(Path("."), WINDOW, 48 * WINDOW)
    return CheckEnv(duckdb.connect(), scope, options)


def _check(bad: set[datetime], severity: Severity = "ERROR") -> Callable[[CheckEnv], Outcome]:
    def evaluate(env: CheckEnv) -> Outcome:
        found = sorted(w for w in bad if env.scope.window_start <= w < env.scope.window_end)
        if found:
            return Outcome(False, f"bad window {found[0]:%H:%M}", severity, {"bad": len(found)})
        return Outcome(True, f"good ({env.scope.describe()})", severity, {"bad": 0})

    return evaluate


def test_a_failed_window_fails_later_evaluations_until_it_passes() -> None:
    bad = {W1}
    first = evaluate_with_rechecks(_check(bad), _env(_scope(W1, "2026-03-04 10:32")), [])
    assert not first.passed and first.description == "bad window 10:15"
    carried = failed_scopes(first.metadata, NOW)
    assert carried == [_scope(W1, "2026-03-04 10:32")]

    later = evaluate_with_rechecks(_check(bad), _env(_scope(W2, "2026-03-04 10:47")), carried)
    assert not later.passed and later.severity == "ERROR"
    assert later.description.startswith("still failing since an earlier run (windows [2026-03-04")
    assert later.metadata["bad"] == 1  # the re-checked scope's findings
    assert later.metadata["this_run"].startswith("good")
    assert failed_scopes(later.metadata, NOW) == carried

    bad.clear()
    fixed = evaluate_with_rechecks(_check(bad), _env(_scope(W1, "2026-03-04 11:02")), carried)
    assert fixed.passed
    assert fixed.metadata[FAILED_SCOPES] == []


def test_only_error_failures_are_carried() -> None:
    warned = evaluate_with_rechecks(
        _check({W1}, severity="WARN"), _env(_scope(W1, "2026-03-04 10:32")), []
    )
    assert not warned.passed and warned.severity == "WARN"
    assert failed_scopes(warned.metadata, NOW) == []


def test_both_the_run_and_an_earlier_scope_failing_are_both_carried() -> None:
    carried = [_scope(W1, "2026-03-04 10:32")]
    both = evaluate_with_rechecks(_check({W1, W3}), _env(_scope(W3, "2026-03-04 11:02")), carried)
    assert (
        both.description == "bad window 10:45; still failing since an earlier run: bad window 10:15"
    )
    assert failed_scopes(both.metadata, NOW) == [*carried, _scope(W3, "2026-03-04 11:02")]


def test_adjacent_failed_scopes_merge_into_one() -> None:
    assert merged(
        [
            _scope(W2, "2026-03-04 10:47"),
            _scope(W1, "2026-03-04 10:32"),
            _scope(W3 + 2 * WINDOW, "2026-03-04 12:00"),
            _scope(W3, "2026-03-04 11:02"),
        ]
    ) == [
        CheckScope(W1, W3 + WINDOW, utc("2026-03-04 10:32"), NOW),
        _scope(W3 + 2 * WINDOW, "2026-03-04 12:00"),
    ]
