"""Bad rows: which rows break a quarantine rule of CONTRACT §4, and how each rule is broken."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from runhub_pipeline.simulate.clock import DAY, MINUTE
from runhub_pipeline.simulate.render import Context, pick, utc_text
from runhub_pipeline.simulate.spec import ANALYTICS_RULES, BUSINESS_RULES, ID_BLOCK, Bools, Int64s

_MONEY_RULES = ("bad_amount", "bad_currency")
_UNKNOWN_PROJECTS = (None, "", "p0000", "deleted-project")


def _pick_bad(
    rng: np.random.Generator,
    rules: Sequence[str],
    money: Bools,
    rate: float,
    at_least_one: bool,
) -> Int64s:
    """Rule number (1-based, 0 = clean) each row is made to break; rows break one rule only."""
    n = len(money)
    bad = np.zeros(n, dtype=np.int64)
    if rate <= 0 or n == 0:
        return bad
    for code, rule in enumerate(rules, start=1):
        allowed = (bad == 0) & (money if rule in _MONEY_RULES else True)
        candidates = np.flatnonzero(allowed)
        count = int(rng.binomial(n, rate / len(rules)))
        count = min(len(candidates), max(count, 1) if at_least_one else count)
        bad[rng.choice(candidates, count, replace=False)] = code
    return bad


def bad_counts(bad: Int64s, rules: Sequence[str]) -> dict[str, int]:
    counts = np.bincount(bad, minlength=len(rules) + 1)
    return {rule: int(counts[code]) for code, rule in enumerate(rules, start=1)}


_BAD_TIMES = ("not a date", "N/A", "2026-02-30T10:00:00Z", "31/01/2026 10:00", None, "")


def _bad_occurred(context: Context, rules: Sequence[str], clean: pl.Expr) -> pl.Expr:
    """occurred_at with the two time rules applied: unparseable text (or NULL where the column is
    typed), and more than a day after received_at."""
    unparseable = (
        pl.lit(None, dtype=pl.Utf8) if context.dialect == "postgresql" else pick(_BAD_TIMES)
    )
    future = utc_text(pl.col("received_us") + pl.col("future_us"))
    return (
        pl.when(pl.col("bad") == rules.index("bad_occurred_at") + 1)
        .then(unparseable)
        .when(pl.col("bad") == rules.index("future_occurred_at") + 1)
        .then(future)
        .otherwise(clean)
    )


def _rule_masks(rules: Sequence[str]) -> dict[str, pl.Expr]:
    """Per rule, whether the row's `bad` code is that rule's."""
    return {name: pl.col("bad") == code for code, name in enumerate(rules, start=1)}


def _unknown_project(rule: dict[str, pl.Expr]) -> pl.Expr:
    return (
        pl.when(rule["unknown_project"])
        .then(pick(_UNKNOWN_PROJECTS))
        .otherwise(pl.col("project_id"))
    )


def finish_rows(
    rng: np.random.Generator, frame: pl.DataFrame, context: Context, rules: Sequence[str]
) -> pl.DataFrame:
    """Keep the rows received in [start, end), number them, pick the rows that break a rule."""
    frame = frame.filter(
        (pl.col("received_us") >= context.start_us) & (pl.col("received_us") < context.end_us)
    ).sort("received_us", "row")
    n = frame.height
    money = frame["is_money"].to_numpy() if "is_money" in frame.columns else np.zeros(n, bool)
    base = context.profile.number * ID_BLOCK
    return frame.with_columns(
        id=pl.Series(np.arange(base + 1, base + 1 + n, dtype=np.int64)),
        bad=pl.Series(_pick_bad(rng, rules, money, context.bad_rate, context.profile.number == 1)),
        form=pl.Series(rng.integers(0, 720, n)),  # 720: an even choice among 2 to 6 forms
        future_us=pl.Series(rng.integers(DAY + MINUTE, 400 * DAY, n)),
    )


def break_business(frame: pl.DataFrame, context: Context) -> pl.DataFrame:
    """Apply each row's `bad` rule in a form the dialect's column can hold."""
    rule = _rule_masks(BUSINESS_RULES)
    amount = pl.col("amount_cents")
    if context.dialect == "sqlite":
        # Bound as text on purpose: SQLite's integer affinity stores "4999" as an integer, while
        # "4999.5" becomes a REAL and "twelve" stays text, both kept as the app would keep them.
        bad_amount = pick(
            [
                pl.concat_str(pl.lit("-"), amount.cast(pl.Utf8)),
                None,
                pl.concat_str(amount.cast(pl.Utf8), pl.lit(".5")),
                "twelve",
            ]
        )
        amount_out = pl.when(rule["bad_amount"]).then(bad_amount).otherwise(amount.cast(pl.Utf8))
        bad_payloads = ["[1, 2]", "null", '"paid"', "42", '{"run_id": ', "not json"]
    else:
        amount_out = (
            pl.when(rule["bad_amount"])
            .then(pl.when(pl.col("form") % 2 == 0).then(-amount - 1))
            .otherwise(amount)
        )
        bad_payloads = ["[1, 2]", "null", '"paid"', "42"]
    return frame.select(
        "id",
        project_id=_unknown_project(rule),
        event_type=pl.when(rule["missing_event_type"])
        .then(pick([None, "", "  "]))
        .otherwise(pl.col("event_type")),
        occurred_at=_bad_occurred(context, BUSINESS_RULES, pl.col("occurred_at")),
        received_at=utc_text(pl.col("received_us")),
        idempotency_key="idempotency_key",
        actor_email="actor_email",
        session_id="session_id",
        amount_cents=amount_out,
        currency=pl.when(rule["bad_currency"])
        .then(pick([None, "US", "EURO", "$", "U$D"]))
        .otherwise(pl.col("currency")),
        payload=pl.when(rule["bad_payload"]).then(pick(bad_payloads)).otherwise(pl.col("payload")),
        bad="bad",
    )


def break_analytics(frame: pl.DataFrame, context: Context) -> pl.DataFrame:
    """Apply each row's `bad` rule to the analytics events."""
    rule = _rule_masks(ANALYTICS_RULES)
    return frame.select(
        "id",
        project_id=_unknown_project(rule),
        event_name="event_name",
        session_id=pl.when(rule["missing_session"])
        .then(pick([None, "", " "]))
        .otherwise(pl.col("session_id")),
        anonymous_id="anonymous_id",
        path="path",
        occurred_at=_bad_occurred(context, ANALYTICS_RULES, pl.col("occurred_at")),
        received_at=utc_text(pl.col("received_us")),
        bad="bad",
    )
