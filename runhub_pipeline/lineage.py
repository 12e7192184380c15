"""Table schemas and column lineage read from the models' SQL by sqlglot.

The schema is the model's `create table if not exists <table> (...)`; the lineage follows each
column of the model's final `insert into <table>` back through the temporary tables the model
creates to the upstream tables' columns. What Dagster shows is what the SQL says.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import dagster as dg
import sqlglot
from sqlglot import exp
from sqlglot.lineage import lineage

from runhub_pipeline.models import render_model, statements_of


@functools.cache
def _statements(model: str) -> tuple[exp.Expr, ...]:
    return tuple(
        sqlglot.parse_one(statement, read="duckdb")
        for statement in statements_of(render_model(model))
    )


def _created_table(statement: exp.Expr) -> str | None:
    if isinstance(statement, exp.Create) and statement.kind == "TABLE":
        target = statement.this
        table = target.this if isinstance(target, exp.Schema) else target
        return table.name if isinstance(table, exp.Table) else None
    return None


def model_table_schema(model: str) -> dg.TableSchema:
    """The columns of the table `model` creates, with their types and NOT NULL constraints."""
    for statement in _statements(model):
        if _created_table(statement) == model and isinstance(statement.this, exp.Schema):
            columns = []
            for definition in statement.this.expressions:
                if not isinstance(definition, exp.ColumnDef):
                    continue
                kind = definition.args.get("kind")
                not_null = any(
                    isinstance(constraint.kind, exp.NotNullColumnConstraint)
                    for constraint in definition.constraints
                )
                columns.append(
                    dg.TableColumn(
                        name=definition.name,
                        type=kind.sql("duckdb").lower() if kind is not None else "unknown",
                        constraints=dg.TableColumnConstraints(nullable=not not_null),
                    )
                )
            return dg.TableSchema(columns=columns)
    raise ValueError(f"sql/{model}.sql creates no table {model}")


def model_inputs(model: str) -> set[str]:
    """The tables the model reads or writes, except its own temporary tables (`_` prefix)."""
    return {
        table.name
        for statement in _statements(model)
        for table in statement.find_all(exp.Table)
        if table.name and not table.name.startswith("_")
    }


def _final_insert(model: str) -> tuple[list[str], exp.Query]:
    inserts = [
        statement
        for statement in _statements(model)
        if isinstance(statement, exp.Insert) and statement.this.find(exp.Table).name == model
    ]
    if not inserts:
        raise ValueError(f"sql/{model}.sql has no insert into {model}")
    insert = inserts[-1]
    query = insert.expression.copy()
    if insert.args.get("with_") is not None:
        query.set("with_", insert.args["with_"].copy())
    columns = [identifier.name for identifier in insert.this.expressions]
    return columns, query


def _temporary_sources(model: str) -> dict[str, exp.Query]:
    """The queries behind the temporary tables the model creates (names starting with `_`)."""
    sources: dict[str, exp.Query] = {}
    for statement in _statements(model):
        name = _created_table(statement)
        if name and name.startswith("_") and isinstance(statement.expression, exp.Query):
            sources[name] = statement.expression
    return sources


def _leaf_columns(model: str, query: exp.Query) -> dict[str, frozenset[tuple[str, str]]]:
    """Per output column of `query` (a query of `model`): the (table, column) pairs it is computed
    from, the model's temporary tables followed through to the tables their queries read.
    Qualifies `query` in place: pass a copy.

    sqlglot can follow them itself (`lineage(..., sources=...)`), but it inlines a temporary
    table's query at every reference, recursively: fct_checkouts grew to nearly 1000 scopes and
    its lineage took seconds, at every Definitions build. Qualifying each query once and joining
    the results here gives the same pairs in a fraction of the time.
    """
    sources = _temporary_sources(model)
    read = {table.name for table in query.find_all(exp.Table) if table.name in sources}
    # The columns of the temporary tables it reads, so that stars and unqualified columns resolve
    # as they do with the tables' queries inlined. The types play no part in the lineage.
    schema = {name: dict.fromkeys(_temporary_lineage(model, name), "unknown") for name in read}
    # trim_selects=False: the trimmed select of each node is only a display label, and building
    # it deep-copies the whole select at every step.
    roots = lineage(None, query, schema, dialect="duckdb", trim_selects=False, copy=False)
    result: dict[str, frozenset[tuple[str, str]]] = {}
    for column, root in roots.items():
        found: set[tuple[str, str]] = set()
        for node in root.walk():
            if node.downstream or not isinstance(node.source, exp.Table):
                continue
            table = node.source.name
            leaf_column = node.name.split(".")[-1]
            if leaf_column == "*":
                continue
            if table in sources:
                # A column of a temporary table: what its own query computes it from.
                found |= _temporary_lineage(model, table)[leaf_column]
            else:
                found.add((table, leaf_column))
        result[column] = frozenset(found)
    return result


@functools.cache
def _temporary_lineage(model: str, name: str) -> dict[str, frozenset[tuple[str, str]]]:
    """`_leaf_columns` of the query behind the model's temporary table `name`, once per table."""
    return _leaf_columns(model, _temporary_sources(model)[name].copy())


def column_dependencies(model: str, upstream: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """Per output column of `model`: the (table, column) pairs of `upstream` it is computed from."""
    allowed = set(upstream)
    columns, query = _final_insert(model)
    # The insert's columns by position; the select's names before qualification rewrites them.
    selected = [select.alias_or_name for select in query.selects]
    leaves = _leaf_columns(model, query)
    return {
        column: sorted(pair for pair in leaves[selected[position]] if pair[0] in allowed)
        for position, column in enumerate(columns)
    }


@functools.cache
def _column_lineage(model: str, upstream: tuple[str, ...]) -> dg.TableColumnLineage:
    return dg.TableColumnLineage(
        deps_by_column={
            column: [
                dg.TableColumnDep(asset_key=dg.AssetKey(table), column_name=name)
                for table, name in deps
            ]
            for column, deps in column_dependencies(model, upstream).items()
        }
    )


def model_column_lineage(model: str, upstream: Iterable[str]) -> dg.TableColumnLineage:
    """`dagster/column_lineage` of the table `model` builds, restricted to its upstream assets."""
    return _column_lineage(model, tuple(sorted(upstream)))
