"""Rendering numeric rows as the app stores them: arrival lags, time text, polars helpers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from runhub_pipeline.resources.app_db import Dialect
from runhub_pipeline.simulate.clock import DAY, HOUR, MINUTE, US, Clock
from runhub_pipeline.simulate.projects import Profile
from runhub_pipeline.simulate.spec import Int64s


@dataclass(frozen=True)
class Context:
    """What rendering a project's rows needs besides the rows."""

    profile: Profile
    clock: Clock
    emails: pl.Series
    run_ids: tuple[str, ...]
    start_us: int
    end_us: int
    bad_rate: float
    dialect: Dialect


def arrival_lags(rng: np.random.Generator, n: int) -> Int64s:
    """received_at - occurred_at: mostly seconds, some minutes and hours, a tail up to 2 days,
    and a few negative ones from client clocks running ahead (never by more than 10 minutes)."""
    u = rng.random(n)
    seconds = np.minimum(rng.lognormal(np.log(0.8), 1.0, n), 60.0) * US
    lag = np.where(u < 0.965, seconds, rng.uniform(MINUTE, HOUR, n))
    lag = np.where(u >= 0.99, rng.uniform(HOUR, DAY, n), lag)
    lag = np.where(u >= 0.996, rng.uniform(DAY, 2 * DAY - MINUTE, n), lag)
    lag = np.where(u >= 0.998, -rng.uniform(US, 10 * MINUTE, n), lag)
    return lag.astype(np.int64)


def time_formats(rng: np.random.Generator, n: int) -> Int64s:
    """How occurred_at is written on SQLite: 0 `...ffffffZ`, 1 local time with its offset,
    2 `YYYY-MM-DD HH:MM:SS` without offset (UTC), 3 milliseconds with `+00:00`."""
    u = rng.random(n)
    return np.select([u < 0.93, u < 0.96, u < 0.98], [0, 1, 2], 3).astype(np.int64)


def utc_text(microseconds: pl.Expr) -> pl.Expr:
    return pl.from_epoch(microseconds, time_unit="us").dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ")


def occurred_text(context: Context) -> pl.Expr:
    utc = utc_text(pl.col("occurred_us"))
    if context.dialect == "postgresql":
        return utc  # a typed column: the text form does not survive, only the instant
    signs = {int(s): f"{'-' if s < 0 else '+'}{abs(s) // 3600:02d}:{abs(s) % 3600 // 60:02d}"
             for s in np.unique(context.clock.offsets)}  # fmt: skip
    offset = pl.col("offset_s").replace_strict(signs, default="+00:00", return_dtype=pl.Utf8)
    local = pl.from_epoch(pl.col("occurred_us") + pl.col("offset_s") * US, time_unit="us")
    naive = pl.from_epoch(pl.col("occurred_us"), time_unit="us")
    return (
        pl.when(pl.col("fmt") == 1)
        .then(pl.concat_str(local.dt.strftime("%Y-%m-%dT%H:%M:%S%.6f"), offset))
        .when(pl.col("fmt") == 2)
        .then(naive.dt.strftime("%Y-%m-%d %H:%M:%S"))
        .when(pl.col("fmt") == 3)
        .then(pl.concat_str(naive.dt.strftime("%Y-%m-%dT%H:%M:%S%.3f"), pl.lit("+00:00")))
        .otherwise(utc)
    )


def pick(options: Sequence[Any]) -> pl.Expr:
    """One of `options` per row, chosen by the row's `form` draw; an option may be an Expr."""

    def value(option: Any) -> pl.Expr:
        return option if isinstance(option, pl.Expr) else pl.lit(option, dtype=pl.Utf8)

    expr = value(options[-1])
    for index, option in reversed(list(enumerate(options[:-1]))):
        expr = pl.when(pl.col("form") % len(options) == index).then(value(option)).otherwise(expr)
    return expr


def lookup(column: str, values: Sequence[str]) -> pl.Expr:
    mapping = dict(enumerate(values))
    return pl.col(column).replace_strict(mapping, default=None, return_dtype=pl.Utf8)


def cycle(column: str, values: Sequence[str]) -> pl.Expr:
    """values[column % len(values)]."""
    mapping = dict(enumerate(values))
    return (pl.col(column) % len(values)).replace_strict(mapping, return_dtype=pl.Utf8)


def padded(text: pl.Expr) -> pl.Expr:
    return pl.concat_str(pl.lit(" "), text, pl.lit(" "))


def stored_project_id(pid: str) -> pl.Expr:
    """The project id as the app stored it: padded on one row in 1,000 (by the `variant` draw)."""
    return pl.when(pl.col("variant") < 1).then(pl.lit(f" {pid} ")).otherwise(pl.lit(pid))


def stored_name(name: pl.Expr, padded_below: int) -> pl.Expr:
    """An event name or type as the app stored it: upper case where `variant` < 3, padded where
    it is below `padded_below`."""
    variant = pl.col("variant")
    return (
        pl.when(variant < 3)
        .then(name.str.to_uppercase())
        .when(variant < padded_below)
        .then(padded(name))
        .otherwise(name)
    )


def zfill(column: str, width: int) -> pl.Expr:
    return pl.col(column).cast(pl.Utf8).str.zfill(width)
