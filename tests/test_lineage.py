"""Column lineage: the per-query join of `lineage.py` gives what sqlglot's own inlining gives.

`column_dependencies` qualifies each query of a model once and follows the temporary tables by
joining their results, instead of letting sqlglot inline every temporary table's query at every
reference (seconds per Definitions build). The slow way is kept here as the reference.
"""

from __future__ import annotations

import pytest
from sqlglot import exp
from sqlglot.lineage import lineage

from runhub_pipeline.assets.marts import MART_MODELS, PLATFORM_METRICS
from runhub_pipeline.lineage import (
    _final_insert,
    _temporary_sources,
    column_dependencies,
    model_inputs,
)


def inlined_dependencies(model: str, upstream: set[str]) -> dict[str, list[tuple[str, str]]]:
    """`column_dependencies` by sqlglot following the temporary tables itself."""
    columns, query = _final_insert(model)
    roots = lineage(
        None, query, {}, sources=_temporary_sources(model), dialect="duckdb", trim_selects=False
    )
    result = {}
    for position, column in enumerate(columns):
        found = {
            (node.source.name, node.name.split(".")[-1])
            for node in roots[query.selects[position].alias_or_name].walk()
            if not node.downstream and isinstance(node.source, exp.Table)
        }
        result[column] = sorted(
            (table, name) for table, name in found if table in upstream and name != "*"
        )
    return result


@pytest.mark.parametrize("model", [*MART_MODELS, PLATFORM_METRICS])
def test_lineage_matches_sqlglot_inlining(model: str) -> None:
    upstream = model_inputs(model)
    assert column_dependencies(model, upstream) == inlined_dependencies(model, upstream)


def test_lineage_follows_a_chain_of_temporary_tables() -> None:
    # fct_checkouts inserts credited_revenue_cents from temporary tables built on temporary tables.
    deps = column_dependencies("fct_checkouts", ["stg_business_events", "stg_projects"])
    assert deps["credited_revenue_cents"] == [
        ("stg_business_events", "amount_cents"),
        ("stg_business_events", "currency"),
        ("stg_business_events", "event_id"),
        ("stg_business_events", "occurred_at"),
        ("stg_projects", "currency"),
    ]
