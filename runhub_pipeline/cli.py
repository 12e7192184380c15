"""`runhub`: init, simulate, backfill and demo on the embedded defaults or production settings.

Every failure the user can cause (bad arguments, unreachable database, unwritable home) ends in
one line on stderr and a non-zero exit; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from runhub_pipeline.definitions import build_definitions
from runhub_pipeline.orchestration import (
    DagsterHomeError,
    RunOutcome,
    dagster_instance,
    execute_window_range,
)
from runhub_pipeline.resources.app_db import (
    AppDatabase,
    AppDbError,
    describe_db,
    describe_db_error,
)
from runhub_pipeline.resources.warehouse import WarehouseNotBuiltError, utc_now
from runhub_pipeline.settings import (
    WINDOW,
    Settings,
    SettingsError,
    floor_to_window,
    is_window_start,
    parse_utc,
    path_problem,
)

EXIT_USAGE = 2
EXIT_FAILED = 1


class CliError(RuntimeError):
    """A failure to report as one line."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a rate between 0 and 1, got {value}")
    return value


def _time(text: str) -> datetime:
    try:
        return parse_utc(text)
    except SettingsError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runhub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("init", help="create or upgrade the app-database schema (idempotent)")

    simulate = commands.add_parser("simulate", help="fill the app database with demo data")
    simulate.add_argument("--projects", type=_positive_int, required=True)
    simulate.add_argument("--days", type=_positive_int, required=True)
    simulate.add_argument("--seed", type=int, required=True)
    simulate.add_argument("--end", type=_time, help="end of the data (default: now, floored)")
    simulate.add_argument("--events-per-day", type=_positive_int, dest="events_per_day")
    simulate.add_argument("--bad-rate", type=_rate, default=0.005, dest="bad_rate")

    backfill = commands.add_parser(
        "backfill", help="materialize the windows starting in [start, end) as one Dagster run"
    )
    backfill.add_argument("--start", type=_time, required=True)
    backfill.add_argument("--end", type=_time, required=True)

    accept = commands.add_parser(
        "accept-check",
        help="accept the latest failure of a check as it is, so later runs stop re-checking it",
    )
    accept.add_argument("check", help="table:check_name, e.g. quarantined_events:quarantine_share")
    accept.add_argument("--reason", required=True, help="why the failure is accepted (kept)")

    demo = commands.add_parser("demo", help="init, simulate, backfill, send, and print a summary")
    demo.add_argument("--projects", type=_positive_int, default=20)
    demo.add_argument("--days", type=_positive_int, default=14)
    demo.add_argument("--seed", type=int, default=42)
    return parser


def ensure_home(settings: Settings) -> None:
    """Create RUNHUB_HOME and prove it is writable before anything is written into it."""
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        # A uniquely named probe: two commands starting at once must not delete each other's.
        with tempfile.TemporaryFile(dir=settings.home):
            pass
    except OSError as error:
        raise CliError(
            f"RUNHUB_HOME {settings.home} is not writable: {path_problem(error)}"
        ) from None


def open_app_db(settings: Settings, must_exist: bool = True) -> AppDatabase:
    app_db = AppDatabase(url=settings.app_db_url)
    if app_db.dialect == "sqlite":
        path = Path(sa.make_url(settings.app_db_url).database or "")
        if must_exist and not path.exists():
            raise CliError(f"app database {path} does not exist: run `runhub init` first")
        if not must_exist:
            path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with app_db.begin() as connection:
            connection.execute(sa.text("select 1"))
    except (sa.exc.DBAPIError, sa.exc.ArgumentError) as error:
        raise CliError(describe_db_error(settings.app_db_url, error)) from None
    if must_exist:
        require_current_schema(app_db)
    return app_db


def require_current_schema(app_db: AppDatabase) -> None:
    """Refuse an app database that `runhub init` has not brought up to the shipped migrations.

    Otherwise a run on, say, an empty database fails inside Dagster: a stack trace per step, a
    failed run in the instance and a warehouse writer file left behind.
    """
    from runhub_pipeline.resources.app_schema import migration_files

    with app_db.begin() as connection:
        # `runhub init` records every migration it applies in this table.
        if not sa.inspect(connection).has_table("runhub_schema_migrations"):
            problem = "no Run Hub schema (table runhub_schema_migrations is missing)"
        else:
            versions = connection.execute(sa.text("select version from runhub_schema_migrations"))
            applied = set(versions.scalars())
            missing = [name for version, name, _ in migration_files() if version not in applied]
            if not missing:
                return
            problem = f"schema is not current ({', '.join(missing)} not applied)"
    raise CliError(f"{describe_db(app_db.url)}: {problem}: run `runhub init`")


def command_init(settings: Settings) -> None:
    from runhub_pipeline.resources.app_schema import migrate

    ensure_home(settings)
    applied = migrate(open_app_db(settings, must_exist=False))
    print(f"app database schema is current ({', '.join(applied) or 'nothing to apply'})")


def command_simulate(settings: Settings, args: argparse.Namespace) -> None:
    from runhub_pipeline.simulate import SimulationSpec, simulate

    ensure_home(settings)
    app_db = open_app_db(settings)
    end = floor_to_window(args.end or utc_now())
    spec_args = {"events_per_day": args.events_per_day} if args.events_per_day else {}
    spec = SimulationSpec(
        projects=args.projects,
        days=args.days,
        seed=args.seed,
        end=end,
        bad_rate=args.bad_rate,
        **spec_args,
    )
    result = simulate(app_db, spec, progress=_progress)
    print(
        f"simulated {result.projects} projects: {result.business_events:,} business events and"
        f" {result.analytics_events:,} analytics events ending {end.isoformat()}"
    )


def _progress(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def run_backfill(settings: Settings, start: datetime, end: datetime) -> RunOutcome:
    """Materialize every window starting in [start, end) and everything downstream, one run."""
    if not is_window_start(start):
        raise CliError(f"--start must be on a 15-minute boundary, got {start.isoformat()}")
    if end <= start:
        raise CliError("--end must be after --start")
    if start < settings.partitions_start:
        raise CliError(
            f"--start {start.isoformat()} is before RUNHUB_PARTITIONS_START"
            f" {settings.partitions_start.isoformat()}"
        )
    closed = floor_to_window(utc_now())
    if end > closed:
        # A window is read once, after it closes: reading an open one would stage part of it
        # and move the watermark T past the present.
        raise CliError(
            f"--end {end.isoformat()} is after the end of the last closed window"
            f" {closed.isoformat()}"
        )
    last = floor_to_window(end - timedelta(microseconds=1))
    windows = int((last - start) / WINDOW) + 1
    print(
        f"backfilling {windows:,} windows as one Dagster run; follow it live in the UI"
        f" (DAGSTER_HOME={settings.dagster_home} dagster dev)",
        flush=True,
    )
    return execute_window_range(settings, start, last)


def command_backfill(settings: Settings, args: argparse.Namespace) -> int:
    ensure_home(settings)
    open_app_db(settings)
    outcome = run_backfill(settings, args.start, args.end)
    if not outcome.success:
        print(f"runhub: backfill run {outcome.run_id} failed: {outcome.failure}", file=sys.stderr)
        return EXIT_FAILED
    print(f"backfill run {outcome.run_id} succeeded")
    return 0


def command_accept_check(settings: Settings, args: argparse.Namespace) -> None:
    from runhub_pipeline.checks.accept import AcceptError, accept_failure

    ensure_home(settings)
    with dagster_instance(settings) as instance:
        try:
            accepted = accept_failure(
                instance, build_definitions(settings), args.check, args.reason
            )
        except AcceptError as error:
            raise CliError(str(error)) from None
    print(
        f"accepted the failure of {accepted.check} in run {accepted.failed_run_id}"
        f" ({accepted.failure}); later runs check only their own windows"
    )


def command_demo(settings: Settings, args: argparse.Namespace) -> int:
    from runhub_pipeline.demo import run_demo

    ensure_home(settings)
    return run_demo(settings, projects=args.projects, days=args.days, seed=args.seed)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        if args.command == "init":
            command_init(settings)
            return 0
        if args.command == "simulate":
            command_simulate(settings, args)
            return 0
        if args.command == "backfill":
            return command_backfill(settings, args)
        if args.command == "accept-check":
            command_accept_check(settings, args)
            return 0
        return command_demo(settings, args)
    except (CliError, SettingsError, AppDbError, WarehouseNotBuiltError, DagsterHomeError) as error:
        print(f"runhub: error: {error}", file=sys.stderr)
        return EXIT_USAGE if isinstance(error, SettingsError) else EXIT_FAILED
    except KeyboardInterrupt:
        print("runhub: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
