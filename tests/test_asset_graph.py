"""A snapshot of the asset graph: keys, groups, deps, partitioning and checks.

A change to the graph shows up in review as a diff of `tests/snapshots/asset_graph.json`.
Regenerate it on purpose: `RUNHUB_UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/test_asset_graph.py`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from runhub_pipeline.definitions import build_definitions
from runhub_pipeline.settings import Settings

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def describe_graph(tmp_path: Path) -> dict[str, Any]:
    definitions = build_definitions(Settings.from_env({"RUNHUB_HOME": str(tmp_path)}))
    graph = definitions.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "group": node.group_name,
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "partitioned": node.partitions_def is not None,
            "materializable": node.is_materializable,
        }
    checks = sorted(
        f"{check.asset_key.to_user_string()}:{check.name}" for check in graph.asset_check_keys
    )
    return {
        "assets": assets,
        "checks": checks,
        "jobs": sorted(job.name for job in definitions.resolve_all_job_defs()),
        "sensors": sorted(sensor.name for sensor in definitions.sensors or []),
        "schedules": sorted(schedule.name for schedule in definitions.schedules or []),
    }


def test_asset_graph_matches_the_snapshot(tmp_path: Path) -> None:
    current = describe_graph(tmp_path)
    if os.environ.get("RUNHUB_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())


def test_every_contract_table_is_an_asset(tmp_path: Path) -> None:
    assets = describe_graph(tmp_path)["assets"]
    contract_tables = {
        "stg_business_events",
        "stg_analytics_events",
        "quarantined_events",
        "business_kpi_daily",
        "revenue_by_currency_daily",
        "fct_checkouts",
        "alert_counts_15min",
        "digest_metrics",
        "workflow_run_metrics",
        "run_overview",
        "platform_success_metrics",
    }
    assert contract_tables <= set(assets)
