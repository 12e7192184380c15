"""Issue 6: the 15-minute tick and the backfill at scale, side by side with what bounds them.

    .venv/bin/python -m bench.run --scale tiny                # smoke run, a few minutes
    .venv/bin/python -m bench.run --scale medium --json bench-medium.json
    make bench BENCH_ARGS="--scale medium --repeat 3"

Loads a workload into throwaway PostgreSQL databases with `runhub simulate` and measures
(a) the steady-state tick against the two-day rollup it replaces, (b) the full backfill against
the COPY extraction limit, (c) the backfill's peak RSS at 1x and 3x the data, (d) sensor ticks
with many projects, (e) a 1,000-recipient send to a local SMTP server. Prints every figure's
median of --repeat runs next to its target (BENCHMARKS.md explains each one).
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.backfill import BackfillSample, measure_backfill, measure_copy_limit
from bench.progress import note, phase
from bench.report import GIB, MIB, Figure, table, write_json
from bench.send import SendSample, measure_send, smtp_sink
from bench.sensor_tick import (
    SensorTick,
    load_sensor_data,
    measure_sensor_ticks,
    sensor_backfill_range,
)
from bench.tick import TickSample, measure_ticks_in_new_process
from bench.workload import (
    SCALES,
    WINDOW,
    BenchHome,
    Scale,
    bench_home,
    load_workload,
    run_runhub,
    throwaway_database,
)
from runhub_pipeline.settings import SettingsError, floor_to_window, is_window_start, parse_utc

PARTS = ("tick", "backfill", "memory", "sensors", "send")
SERVING_TABLES = ("business_kpi_daily", "runhub_publish_log")


def reset_serving(url: str) -> None:
    """Empty what earlier backfills served to the app, so that every backfill publishes alike."""
    with psycopg.connect(url) as connection:
        for name in SERVING_TABLES:
            connection.execute(f"truncate table {name}")


@dataclasses.dataclass
class Plan:
    scale: Scale
    repeat: int
    instance: str
    seed: int
    parts: tuple[str, ...]
    end: datetime
    """End of the simulated data: the last closed 15-minute window's end."""
    requested_partitions_start: datetime | None = None
    """RUNHUB_PARTITIONS_START as a deployment running since then has it (--partitions-start)."""

    @property
    def data_start(self) -> datetime:
        return self.end - timedelta(days=self.scale.days)

    @property
    def partitions_start(self) -> datetime:
        return self.requested_partitions_start or self.data_start - timedelta(days=1)

    @property
    def tick_windows(self) -> int:
        """Two ticks per repeat: the first and the second run of one new process."""
        return 2 * self.repeat if "tick" in self.parts else 0

    @property
    def backfill_end(self) -> datetime:
        """The backfill leaves the last windows for the steady-state ticks."""
        return self.end - self.tick_windows * WINDOW


@dataclasses.dataclass
class Results:
    ticks: list[TickSample] = dataclasses.field(default_factory=list)
    backfills: list[BackfillSample] = dataclasses.field(default_factory=list)
    copy_seconds: list[float] = dataclasses.field(default_factory=list)
    copy_rows: int = 0
    backfills_3x: list[BackfillSample] = dataclasses.field(default_factory=list)
    sensor_ticks: list[SensorTick] = dataclasses.field(default_factory=list)
    sensor_projects: int = 0
    sends: list[SendSample] = dataclasses.field(default_factory=list)
    workload: dict[str, Any] = dataclasses.field(default_factory=dict)


def run_1x(plan: Plan, results: Results) -> None:
    scale = plan.scale
    with throwaway_database("app database, 1x") as url:
        with bench_home(url, plan.partitions_start, plan.instance, "1x-1") as home:
            with phase(
                f"simulate {scale.projects} projects x {scale.days} days"
                f" (--events-per-day {scale.events_per_day})"
            ):
                loaded = load_workload(
                    home, scale.projects, scale.days, scale.events_per_day, plan.end, plan.seed
                )
            results.workload["simulate_seconds"] = loaded.seconds
            results.workload["simulate_output"] = loaded.output.splitlines()[-1]
            note(loaded.output.splitlines()[-1])
            if {"backfill", "memory", "tick"} & set(plan.parts):
                backfill_rounds(plan, results.backfills, url, home, "1x")
            if "tick" in plan.parts:
                for index in range(plan.repeat):
                    first = plan.backfill_end + 2 * index * WINDOW
                    with phase(
                        f"ticks {index + 1}/{plan.repeat}: windows {first:%Y-%m-%d %H:%M}Z and"
                        " the next, in one new process"
                    ):
                        samples = measure_ticks_in_new_process(home, [first, first + WINDOW])
                    for sample in samples:
                        note(
                            f"  run {sample.run_in_process} of the process: steps"
                            f" {sample.timings.steps:.2f} s, launch {sample.launch:.2f} s, source"
                            f" reads {sample.source_read_seconds:.3f} s for"
                            f" {sample.source_rows:,} rows ({sample.new_rows:,} new), rollup"
                            f" {sample.rollup.seconds:.3f} s"
                            + ("" if sample.success else f"; RUN FAILED: {sample.failure}")
                        )
                    results.ticks.extend(samples)
        if {"backfill", "memory"} & set(plan.parts):
            for index in range(2, plan.repeat + 1):
                with bench_home(url, plan.partitions_start, plan.instance, f"1x-{index}") as home:
                    backfill_rounds(plan, results.backfills, url, home, "1x", index)
        if "backfill" in plan.parts:
            for index in range(plan.repeat):
                with phase(f"COPY extraction limit {index + 1}/{plan.repeat}"):
                    results.copy_seconds.append(
                        measure_copy_limit(url, plan.data_start, plan.backfill_end)
                    )
            results.copy_rows = results.backfills[0].events if results.backfills else 0


def backfill_rounds(
    plan: Plan,
    samples: list[BackfillSample],
    url: str,
    home: BenchHome,
    label: str,
    index: int = 1,
) -> None:
    reset_serving(url)
    windows = int((plan.backfill_end - plan.data_start) / WINDOW)
    with phase(f"backfill {label} {index}/{plan.repeat}: {windows:,} windows as one run"):
        sample = measure_backfill(home, plan.data_start, plan.backfill_end)
    samples.append(sample)
    note(
        f"  {sample.events:,} events in {sample.seconds:.1f} s"
        f" ({sample.events / sample.seconds:,.0f} events/s), peak RSS"
        f" {sample.peak_rss / MIB:,.0f} MiB; steps {sample.timings.steps:.1f} s, launch"
        f" {sample.timings.launch:.1f} s"
    )


def run_3x(plan: Plan, results: Results) -> None:
    scale = plan.scale
    with throwaway_database("app database, 3x") as url:
        for index in range(1, plan.repeat + 1):
            with bench_home(url, plan.partitions_start, plan.instance, f"3x-{index}") as home:
                if index == 1:
                    with phase(f"simulate 3x: --events-per-day {scale.events_per_day * 3}"):
                        loaded = load_workload(
                            home,
                            scale.projects,
                            scale.days,
                            scale.events_per_day * 3,
                            plan.end,
                            plan.seed,
                        )
                    note(loaded.output.splitlines()[-1])
                backfill_rounds(plan, results.backfills_3x, url, home, "3x", index)


def run_sensors_and_send(plan: Plan, results: Results) -> None:
    scale = plan.scale
    results.sensor_projects = scale.sensor_projects
    with (
        throwaway_database(f"app database, {scale.sensor_projects:,} projects") as url,
        bench_home(url, plan.partitions_start, plan.instance, "sensors") as home,
    ):
        run_runhub(home, ["init"], "init")
        with phase(f"load {scale.sensor_projects:,} projects for the sensors and the send"):
            load_sensor_data(url, scale.sensor_projects, scale.send_recipients, plan.end)
        start, end = sensor_backfill_range(plan.end)
        with phase("backfill them (the sensors read its warehouse and instance)"):
            run_runhub(
                home,
                ["backfill", f"--start={start:%Y-%m-%dT%H:%MZ}", f"--end={end:%Y-%m-%dT%H:%MZ}"],
                "backfill",
            )
        if "sensors" in plan.parts:
            for index in range(plan.repeat):
                with phase(f"sensor ticks {index + 1}/{plan.repeat}"):
                    ticks = measure_sensor_ticks(home)
                for tick in ticks:
                    note(f"  {tick.sensor}: {tick.seconds:.3f} s, {tick.outcome[:100]}")
                results.sensor_ticks.extend(ticks)
        if "send" in plan.parts:
            with smtp_sink() as smtp_url:
                for index in range(plan.repeat):
                    with phase(f"send {index + 1}/{plan.repeat}: {scale.send_recipients:,} mails"):
                        sample = measure_send(home, smtp_url)
                    note(f"  sent {sample.sent:,} in {sample.seconds:.2f} s ({sample.status})")
                    results.sends.append(sample)


def figures(plan: Plan, results: Results) -> list[Figure]:
    out: list[Figure] = []
    ticks = [tick for tick in results.ticks if tick.success]
    # A failed run has no steps to time; the bench then exits non-zero with the failure.
    if ticks and all(tick.success for tick in results.ticks):
        out += [
            Figure(
                "a",
                "tick: rollup source time / tick source-query time",
                [t.rollup.seconds / max(t.source_read_seconds, 1e-9) for t in ticks],
                "x",
                ">= 20x",
                lambda v: v >= 20,
                "tick "
                + ", ".join(f"{t.source_read_seconds:.3f}" for t in ticks)
                + " s; rollup "
                + ", ".join(f"{t.rollup.seconds:.3f}" for t in ticks)
                + " s; each side on an open connection, the tick's set-up "
                + ", ".join(f"{t.source_connect_seconds:.3f}" for t in ticks)
                + " s",
            ),
            Figure(
                "a",
                "tick: steps wall time, a new process's first run (as the daemon runs it)",
                [t.timings.steps for t in ticks if t.run_in_process == 1],
                "s",
                "< 5 s",
                lambda v: v < 5,
                "ingest, marts, checks, serving; includes importing GX at the first check",
            ),
            Figure(
                "a",
                "tick: steps wall time, the process's second run (warm)",
                [t.timings.steps for t in ticks if t.run_in_process > 1],
                "s",
                "< 5 s",
                lambda v: v < 5,
            ),
            Figure(
                "a",
                "tick: run launch (call -> first STEP_START)",
                [t.launch for t in ticks],
                "s",
                "reported beside",
                None,
                "event log: RUN_START -> first step "
                + ", ".join(f"{t.timings.run_start_to_first_step:.2f}" for t in ticks)
                + " s",
            ),
            Figure(
                "a",
                "tick: source rows read (client) / window's new rows",
                [t.source_rows / max(t.new_rows, 1) for t in ticks],
                "x",
                "<= 1.1x",
                lambda v: v <= 1.1,
                ", ".join(f"{t.source_rows:,}/{t.new_rows:,}" for t in ticks),
            ),
            Figure(
                "a",
                "tick: tuples PostgreSQL read (server) / window's new rows",
                [t.server_tuples / max(t.new_rows, 1) for t in ticks],
                "x",
                "<= 1.1x",
                lambda v: v <= 1.1,
                "rollup read "
                + ", ".join(f"{t.rollup.server_tuples:,}" for t in ticks)
                + " tuples",
            ),
        ]
    if results.backfills and results.copy_seconds:
        copy_rate = results.copy_rows / statistics.median(results.copy_seconds)
        rates = [b.events / b.seconds for b in results.backfills]
        out += [
            Figure(
                "b",
                "backfill: events/s (runhub backfill, whole command)",
                rates,
                "rows/s",
                "",
                None,
                f"{results.backfills[0].events:,} events",
            ),
            Figure("b", "COPY extraction limit", [copy_rate], "rows/s", "", None),
            Figure(
                "b",
                "backfill / COPY limit",
                [100 * rate / copy_rate for rate in rates],
                "%",
                ">= 50 %",
                lambda v: v >= 50,
            ),
        ]
    if results.backfills and "memory" in plan.parts:
        out.append(
            Figure(
                "c",
                "backfill peak RSS, 1x (process tree)",
                [b.peak_rss / MIB for b in results.backfills],
                "MiB",
                "< 2 GiB",
                lambda v: v * MIB < 2 * GIB,
            )
        )
    if results.backfills_3x:
        out.append(
            Figure(
                "c",
                "backfill peak RSS, 3x (process tree)",
                [b.peak_rss / MIB for b in results.backfills_3x],
                "MiB",
                "< 2 GiB",
                lambda v: v * MIB < 2 * GIB,
                f"{results.backfills_3x[0].events:,} events",
            )
        )
        one = statistics.median(b.peak_rss for b in results.backfills)
        out.append(
            Figure(
                "c",
                "peak RSS 3x / 1x",
                [statistics.median(b.peak_rss for b in results.backfills_3x) / one],
                "x",
                "<= 1.2x",
                lambda v: v <= 1.2,
            )
        )
    if results.sensor_ticks:
        by_sensor: dict[str, list[float]] = {}
        outcomes: dict[str, str] = {}
        for tick in results.sensor_ticks:
            by_sensor.setdefault(tick.sensor, []).append(tick.seconds)
            outcomes[tick.sensor] = tick.outcome
        for name, seconds in by_sensor.items():
            out.append(
                Figure(
                    "d",
                    f"sensor tick, {results.sensor_projects:,} projects: {name}",
                    seconds,
                    "s",
                    "< 1 s",
                    lambda v: v < 1,
                    outcomes[name][:60],
                )
            )
    if results.sends:
        out.append(
            Figure(
                "e",
                f"send to {plan.scale.send_recipients:,} recipients (render + SMTP)",
                [s.seconds for s in results.sends],
                "s",
                "< 10 s",
                lambda v: v < 10,
                "sent " + ", ".join(f"{s.sent:,}" for s in results.sends),
            )
        )
    return out


def details(results: Results) -> str:
    lines = []
    for tick in results.ticks:
        steps = ", ".join(f"{key} {value:.2f}" for key, value in tick.timings.per_step.items())
        reads = ", ".join(
            f"{key} {rows:,} rows {tick.seconds_by_query.get(key, 0.0) * 1000:.1f} ms"
            for key, rows in sorted(tick.rows_by_query.items())
        )
        lines.append(
            f"tick {tick.window:%H:%M}Z (run {tick.run_in_process} of its process): call"
            f" {tick.call_seconds:.2f} s = launch"
            f" {tick.call_to_first_event:.2f} (definitions, instance, run creation) +"
            f" {tick.timings.first_event_to_run_start:.2f} (planned -> RUN_START) +"
            f" {tick.timings.run_start_to_first_step:.2f} (RUN_START -> first step) + steps"
            f" {tick.timings.steps:.2f} + end {tick.timings.last_step_to_run_end:.2f};"
            f" {tick.timings.events} events logged"
        )
        lines.append(f"  steps (s): {steps}")
        lines.append(
            f"  app reads: {tick.source_statements} statements by table: {reads};"
            f" app writes {tick.write_seconds:.3f} s"
        )
    for label, samples in (("1x", results.backfills), ("3x", results.backfills_3x)):
        for sample in samples:
            t = sample.timings
            steps = ", ".join(f"{key} {value:.1f}" for key, value in t.per_step.items())
            lines.append(
                f"backfill {label}: command {sample.seconds:.1f} s; run: planned -> RUN_START"
                f" {t.first_event_to_run_start:.1f}, -> first step {t.run_start_to_first_step:.1f},"
                f" steps {t.steps:.1f}, end {t.last_step_to_run_end:.1f}; {t.events:,} events"
                f" logged; steps (s): {steps}"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    parser.add_argument("--scale", choices=sorted(SCALES), default="tiny")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    parser.add_argument(
        "--instance",
        choices=("postgres", "sqlite"),
        default="postgres",
        help="Dagster instance storage: dagster-postgres as deploy/dagster.yaml (production),"
        " or the embedded SQLite one of `runhub` without a dagster.yaml",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--only", choices=PARTS, action="append", help="measure only these parts (repeatable)"
    )
    parser.add_argument(
        "--partitions-start",
        type=_window_boundary,
        help="RUNHUB_PARTITIONS_START, e.g. 2026-01-01T00:00Z (the default of `runhub`): measure"
        " a deployment with that much window history; default one day before the data",
    )
    parser.add_argument("--json", dest="json_path", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    return args


def _window_boundary(text: str) -> datetime:
    try:
        moment = parse_utc(text)
    except SettingsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not is_window_start(moment):
        raise argparse.ArgumentTypeError(f"not on a 15-minute boundary: {text}")
    return moment


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    now = datetime.now(UTC)
    plan = Plan(
        scale=SCALES[args.scale],
        repeat=args.repeat,
        instance=args.instance,
        seed=args.seed,
        parts=tuple(args.only or PARTS),
        end=floor_to_window(now),
        requested_partitions_start=args.partitions_start,
    )
    if plan.partitions_start > plan.data_start:
        print(
            f"bench: --partitions-start {plan.partitions_start:%Y-%m-%dT%H:%MZ} is after the"
            f" data start {plan.data_start:%Y-%m-%dT%H:%MZ}",
            file=sys.stderr,
        )
        return 2
    results = Results()
    note(
        f"bench: scale {plan.scale.name}, repeat {plan.repeat}, instance {plan.instance},"
        f" parts {', '.join(plan.parts)}; data ends {plan.end:%Y-%m-%d %H:%M}Z;"
        f" partitions start {plan.partitions_start:%Y-%m-%d %H:%M}Z"
    )
    if {"tick", "backfill", "memory"} & set(plan.parts):
        run_1x(plan, results)
    if "memory" in plan.parts:
        run_3x(plan, results)
    if {"sensors", "send"} & set(plan.parts):
        run_sensors_and_send(plan, results)
    found = figures(plan, results)
    header = {
        "scale": dataclasses.asdict(plan.scale),
        "repeat": plan.repeat,
        "instance": plan.instance,
        "partitions_start": plan.partitions_start.isoformat(),
        "machine": f"{platform.node()} {platform.machine()}, {platform.python_version()}",
        "started": now.isoformat(),
        "workload": results.workload,
    }
    print()
    print(details(results))
    print()
    print(
        f"scale {plan.scale.name} ({plan.scale.projects} projects x {plan.scale.days} days,"
        f" --events-per-day {plan.scale.events_per_day}), Dagster instance {plan.instance},"
        f" partitions start {plan.partitions_start:%Y-%m-%d %H:%M}Z"
    )
    print(table(found, plan.repeat))
    if args.json_path:
        write_json(Path(args.json_path), header, found, dataclasses.asdict(results))
        note(f"wrote {args.json_path}")
    return 0 if all(t.success for t in results.ticks) else 1


if __name__ == "__main__":
    sys.exit(main())
