"""Run Hub's Dagster instance class, named by `deploy/dagster.yaml` and the embedded config.

Two departures from a plain DagsterInstance, each measured:

- Pooled storage connections. dagster-postgres opens and closes a PostgreSQL connection for every
  storage call, except in the webserver, which switches its storages to a small pool
  (`optimize_for_webserver`). A run worker writes every event through it: a 4-window run opened
  853 connections (72 with this class; see `tests/test_dagster_instance.py`), each a TCP and
  authentication round trip. This class gives every process that loads the instance (run
  workers, the daemon, `runhub`) the same pool the webserver uses: one kept connection per
  storage, more opened only while busy. No-op on SQLite storage.
- One planned execution per asset check and run. Dagster 1.13 gives an unpartitioned check in a
  range run the run's whole partition range (`DagsterRun.get_resolved_partitions_subset_for_events`
  returns the run's subset whatever the check's partitions), and the storage writes one
  execution row per window, each with the serialized event: 56 checks x 2,880 windows, 39 s of a
  30-day backfill before its first step. Run Hub's checks are unpartitioned by design (a check
  judges the run's windows as a whole, named in its metadata), so their planned events carry no
  partitions and each check is one execution of its run, as Dagster records it in a
  single-window run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationPlanned,
)

# The webserver's own defaults for the same call (dagster-webserver's CLI options).
POOL_RECYCLE_SECONDS = 3600
POOL_MAX_OVERFLOW = 20
# Run workers and the daemon run long statements (planning a 30-day backfill): no timeout.
NO_STATEMENT_TIMEOUT = 0


class RunhubDagsterInstance(dg.DagsterInstance):
    """A DagsterInstance with pooled storage connections and one planned execution per check."""

    # Dagster asks a custom instance class for its own settings (none) and its storage defaults
    # (those of a plain instance).
    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def config_defaults(cls, base_dir: str) -> Mapping[str, Any]:
        from dagster._core.instance.ref import InstanceRef

        return InstanceRef.config_defaults(base_dir)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.optimize_for_webserver(
            statement_timeout=NO_STATEMENT_TIMEOUT,
            pool_recycle=POOL_RECYCLE_SECONDS,
            max_overflow=POOL_MAX_OVERFLOW,
        )

    def report_dagster_event(
        self,
        dagster_event: dg.DagsterEvent,
        run_id: str,
        log_level: str | int = logging.INFO,
        batch_metadata: Any = None,
        timestamp: float | None = None,
    ) -> None:
        # Every Run Hub check is unpartitioned (module docstring; tests/test_dagster_instance.py
        # fails on one that is not): the planned event drops the run's range Dagster gave it.
        planned = dagster_event.event_specific_data
        if (
            dagster_event.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED
            and isinstance(planned, AssetCheckEvaluationPlanned)
            and planned.partitions_subset is not None
        ):
            dagster_event = dagster_event._replace(
                event_specific_data=AssetCheckEvaluationPlanned(
                    asset_key=planned.asset_key, check_name=planned.check_name
                )
            )
        super().report_dagster_event(
            dagster_event, run_id, log_level, batch_metadata=batch_metadata, timestamp=timestamp
        )
