"""Great Expectations (GX Core 1.x) suites, kept as data files in `checks/suites/<table>.json`.

Each suite validates the rows one run wrote to its table, as a pandas DataFrame read from the
warehouse (the check's read-only connection). Every validation result is saved as JSON under
`$RUNHUB_HOME/gx_results`, and the Data Docs site (`$RUNHUB_HOME/data_docs`) is rebuilt from the
latest results at most once an hour during runs, and on demand at the end of `runhub demo`.

GX costs seconds to import, so it is imported here, lazily, inside the functions that need it:
loading the Dagster definitions or running a sensor never pays for it.
"""

import fcntl
import functools
import importlib
import importlib.util
import json
import os
import shutil
import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from runhub_pipeline.checks.core import markdown_table

DATA_DOCS_SITE = "local_site"  # the site every ephemeral GX context already owns
DATA_DOCS_MIN_INTERVAL = timedelta(hours=1)
RESULTS_KEPT_PER_SUITE = 200
RESULTS_IN_DOCS_PER_SUITE = 24
_RESULT_NAME_FORMAT = "%Y%m%dT%H%M%S%fZ"

# GX imports these at import time for one expectation no suite here uses (KL divergence); they are
# about half of GX's import time (`python -X importtime`, see BENCHMARKS.md). The daemon starts a
# new process for every run, so every tick paid for them. They now load at their first use.
_MODULES_GX_DEFERS = ("scipy.stats", "altair")


def suite_names() -> list[str]:
    """The tables that have a suite: one `suites/<table>.json` each."""
    folder = resources.files("runhub_pipeline.checks") / "suites"
    return sorted(
        e.name.removesuffix(".json") for e in folder.iterdir() if e.name.endswith(".json")
    )


def suite_definition(name: str) -> dict[str, Any]:
    """The suite file's content: GX's own JSON form of an ExpectationSuite."""
    text = (resources.files("runhub_pipeline.checks") / "suites" / f"{name}.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


@dataclass(frozen=True)
class ExpectationFailure:
    expectation: str
    severity: str
    unexpected_count: int | None
    unexpected_percent: float | None
    exception: str | None
    sample: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class SuiteRun:
    suite: str
    rows: int
    evaluated: int
    failures: list[ExpectationFailure]
    result_path: Path | None

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def severity(self) -> Literal["ERROR", "WARN"]:
        """ERROR if a critical expectation failed (or errored), WARN if only lesser ones did."""
        critical = any(f.severity == "critical" for f in self.failures)
        return "ERROR" if critical or self.passed else "WARN"

    def metadata(self, sample_rows: int) -> dict[str, Any]:
        failures = markdown_table(
            ["expectation", "severity", "unexpected_count", "unexpected_percent", "exception"],
            [
                (
                    f.expectation,
                    f.severity,
                    f.unexpected_count,
                    None if f.unexpected_percent is None else round(f.unexpected_percent, 3),
                    f.exception,
                )
                for f in self.failures
            ],
        )
        sample: list[dict[str, Any]] = []
        for failure in self.failures:
            sample.extend({"expectation": failure.expectation, **row} for row in failure.sample)
        columns = list(dict.fromkeys(k for row in sample for k in row))
        offending = [tuple(row.get(c) for c in columns) for row in sample[:sample_rows]]
        metadata: dict[str, Any] = {
            "suite": self.suite,
            "rows_validated": self.rows,
            "expectations_evaluated": self.evaluated,
            "expectations_failed": len(self.failures),
            "unexpected_rows_total": sum(f.unexpected_count or 0 for f in self.failures),
            "failures": failures,
            "sample": markdown_table(columns, offending),
        }
        if self.result_path is not None:
            metadata["validation_result"] = str(self.result_path)
        return metadata


def _gx() -> Any:
    """The great_expectations module, imported on first use with its telemetry off."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"  # read by GX at import time
    if "great_expectations" not in sys.modules:
        for name in _MODULES_GX_DEFERS:
            _defer_import(name)
    import great_expectations

    return great_expectations


class _DeferredModule(types.ModuleType):
    """Stands in `sys.modules` for a module until one of its attributes is read, then loads it.

    `importlib.util.LazyLoader` does not serve here: an `import` of a module already in
    `sys.modules` reads its `__spec__`, which makes a LazyLoader module load at once.
    """

    def __getattr__(self, attribute: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)  # names already bound to the stand-in keep working
        return getattr(module, attribute)


def _defer_import(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None:
        return
    stand_in = _DeferredModule(name)
    stand_in.__spec__ = spec
    stand_in.__file__ = spec.origin  # module scans (inspect.getmodule) read it
    sys.modules[name] = stand_in


@functools.cache
def _context() -> Any:
    """One ephemeral GX context per process: building one per check would cost a second each."""
    gx = _gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    context.data_sources.add_pandas("runhub_warehouse")
    return context


@functools.cache
def _suite(name: str) -> Any:
    return _context().suites.add(_gx().ExpectationSuite(**suite_definition(name)))


@functools.cache
def _batch_definition(name: str) -> Any:
    source = _context().data_sources.get("runhub_warehouse")
    return source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("run_rows")


def validate_rows(
    suite_name: str,
    frame: pd.DataFrame,
    *,
    sample_rows: int,
    results_dir: Path | None,
    run_name: str,
    validated_at: datetime,
) -> SuiteRun:
    """Validate `frame` against `suites/<suite_name>.json`; keep the result as JSON."""
    frame = frame.reset_index(drop=True)
    batch = _batch_definition(suite_name).get_batch(batch_parameters={"dataframe": frame})
    # Pass or fail first: SUMMARY results (counts, samples) cost GX extra metrics and result
    # building on every validation, and a passing run has nothing to show beyond "met". Only a
    # failing suite is validated again for its counts and samples.
    result = batch.validate(_suite(suite_name), result_format="BOOLEAN_ONLY")
    if not result.success:
        result = batch.validate(
            _suite(suite_name),
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": sample_rows},
        )
    failures = [_failure(r, frame, sample_rows) for r in result.results if not r.success]
    path = None
    if results_dir is not None:
        path = _save_result(result, results_dir / suite_name, run_name, validated_at)
    return SuiteRun(suite_name, len(frame), len(result.results), failures, path)


def _failure(result: Any, frame: pd.DataFrame, sample_rows: int) -> ExpectationFailure:
    config = result.expectation_config
    details = result.result or {}
    where = config.kwargs.get("column") or config.kwargs.get("column_list") or ""
    if not where and "column_A" in config.kwargs:
        where = f"{config.kwargs['column_A']}, {config.kwargs['column_B']}"
    indexes = [i for i in details.get("partial_unexpected_index_list") or [] if i in frame.index]
    sample = [
        {k: _plain(v) for k, v in row.items()}
        for row in frame.loc[indexes[:sample_rows]].to_dict(orient="records")
    ]
    return ExpectationFailure(
        expectation=f"{config.type}({where})",
        severity=str(getattr(config.severity, "value", config.severity)),
        unexpected_count=details.get("unexpected_count"),
        unexpected_percent=details.get("unexpected_percent"),
        exception=_exception_message(result.exception_info),
        sample=sample,
    )


def _exception_message(info: Any) -> str | None:
    """The first exception message of an expectation that errored (GX reports success=False).

    GX 1.x gives either one `{raised_exception, exception_message, ...}` dict or one such dict per
    metric it failed to compute.
    """
    if not isinstance(info, dict):
        return None
    candidates = [info, *(v for v in info.values() if isinstance(v, dict))]
    for candidate in candidates:
        if candidate.get("raised_exception"):
            return str(candidate.get("exception_message") or "the expectation raised an error")
    return None


def _plain(value: Any) -> Any:
    """A cell of a pandas row as a plain Python value, missing values as None."""
    missing = pd.isna(value)
    if isinstance(missing, bool) and missing:
        return None
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            return value.item()
        except (ValueError, AttributeError):
            return value
    return value


def _save_result(result: Any, folder: Path, run_name: str, validated_at: datetime) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = validated_at.astimezone(UTC).strftime(_RESULT_NAME_FORMAT)
    path = folder / f"{stamp}__{run_name}.json"
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(_context().validation_results_store.serialize(result))
    os.replace(temporary, path)
    for old in sorted(folder.glob("*.json"))[:-RESULTS_KEPT_PER_SUITE]:
        old.unlink(missing_ok=True)
    return path


def data_docs_index(docs_dir: Path) -> Path:
    return docs_dir / "index.html"


def maybe_build_data_docs(
    docs_dir: Path, results_dir: Path, now: datetime, min_interval: timedelta
) -> Path | None:
    """Rebuild the Data Docs unless they were built less than `min_interval` before `now`.

    Returns the index page, or None when there is none yet and another process is building it.
    """
    index = data_docs_index(docs_dir)
    if index.exists():
        built_at = datetime.fromtimestamp(index.stat().st_mtime, UTC)
        if now - built_at < min_interval:
            return index
    return build_data_docs(docs_dir, results_dir, wait=False)


def build_data_docs(docs_dir: Path, results_dir: Path, wait: bool = True) -> Path | None:
    """Build the Data Docs site from the latest saved results of every suite; returns index.html.

    The site is built beside `docs_dir` and swapped in, so readers never see half a site. One
    builder at a time: with `wait=False` a busy lock means someone else is building right now.
    """
    docs_dir.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(docs_dir.with_name(f".{docs_dir.name}.lock"), wait) as acquired:
        if not acquired:
            return data_docs_index(docs_dir) if data_docs_index(docs_dir).exists() else None
        staging = docs_dir.with_name(f".{docs_dir.name}.{os.getpid()}.new")
        shutil.rmtree(staging, ignore_errors=True)
        _render_site(staging, results_dir)
        previous = docs_dir.with_name(f".{docs_dir.name}.{os.getpid()}.old")
        if docs_dir.exists():
            os.replace(docs_dir, previous)
        os.replace(staging, docs_dir)
        shutil.rmtree(previous, ignore_errors=True)
    return data_docs_index(docs_dir)


@contextmanager
def _build_lock(path: Path, wait: bool) -> Iterator[bool]:
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _render_site(site_dir: Path, results_dir: Path) -> None:
    """Render every suite and its latest results into `site_dir` with a fresh ephemeral context."""
    gx = _gx()
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    site = dict(context.variables.data_docs_sites[DATA_DOCS_SITE])
    site["store_backend"] = {
        "class_name": "TupleFilesystemStoreBackend",
        "base_directory": str(site_dir),
    }
    context.update_data_docs_site(DATA_DOCS_SITE, site)
    store = context.validation_results_store
    for name in suite_names():
        context.suites.add(gx.ExpectationSuite(**suite_definition(name)))
        saved = sorted((results_dir / name).glob("*.json"))[-RESULTS_IN_DOCS_PER_SUITE:]
        for path in saved:
            stamp, _, run_name = path.stem.partition("__")
            run_time = datetime.strptime(stamp, _RESULT_NAME_FORMAT).replace(tzinfo=UTC)
            result = store.deserialize(path.read_text())
            suite_id = ExpectationSuiteIdentifier(name=name)
            key = ValidationResultIdentifier(
                expectation_suite_identifier=suite_id,
                run_id=RunIdentifier(run_name=run_name, run_time=run_time),
                batch_identifier=result.batch_id,
            )
            store.store_validation_results(result, key, suite_id)
    context.build_data_docs(site_names=[DATA_DOCS_SITE])
    # The index is the entry point even before any result exists.
    if not data_docs_index(site_dir).exists():
        site_dir.mkdir(parents=True, exist_ok=True)
        data_docs_index(site_dir).write_text("<html><body>No validation results yet.</body></html>")
