"""The Dagster instance class of production (`deploy/dagster.yaml`): pooled storage connections.

dagster-postgres opens and closes a PostgreSQL connection for every storage call, except in the
webserver, which switches its storages to a small pool (`optimize_for_webserver`). A run worker
writes every event through it: a 4-window run opened 853 connections (72 with this class; see
`tests/test_dagster_instance.py`), each a TCP and authentication round trip. This
class gives every process that loads the instance (run workers, the daemon, `runhub`) the same
pool the webserver uses: one kept connection per storage, more opened only while busy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

# The webserver's own defaults for the same call (dagster-webserver's CLI options).
POOL_RECYCLE_SECONDS = 3600
POOL_MAX_OVERFLOW = 20
# Run workers and the daemon run long statements (planning a 30-day backfill): no timeout.
NO_STATEMENT_TIMEOUT = 0


class PooledDagsterInstance(dg.DagsterInstance):
    """A DagsterInstance whose storages keep their connections (no-op on SQLite storage)."""

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
