"""SQL models: `sql/<table>.sql`, rendered by Jinja2 for shape only, parsed by sqlglot.

Values never pass through Jinja2; they are bound as `$name` parameters when the statement runs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from importlib import resources
from typing import Any

import duckdb
import jinja2
import sqlglot
from sqlglot import exp

_ENV = jinja2.Environment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True
)


@functools.cache
def model_source(name: str) -> str:
    """The raw text of `sql/<name>.sql`."""
    return (resources.files("runhub_pipeline") / "sql" / f"{name}.sql").read_text()


def render_model(name: str, **shape: Any) -> str:
    """The model's SQL with its Jinja2 shape arguments (dialect, column lists) filled in."""
    return _ENV.from_string(model_source(name)).render(**{"dialect": "duckdb", **shape})


def split_statements(sql: str, dialect: str = "duckdb") -> list[exp.Expr]:
    """Parse a rendered model into its statements; raises sqlglot.ParseError if it is invalid."""
    return [statement for statement in sqlglot.parse(sql, read=dialect) if statement is not None]


def transpile(sql: str, write: str, read: str = "duckdb") -> list[str]:
    """The model's statements in another engine's dialect (e.g. `postgres`)."""
    return sqlglot.transpile(sql, read=read, write=write, pretty=True)


_PARAMETER = re.compile(r"\$([a-z_][a-z0-9_]*)")


def statements_of(sql: str) -> list[str]:
    """A rendered model's statements; models end each statement with `;` at the end of a line."""
    body = "\n".join(line for line in sql.splitlines() if not line.lstrip().startswith("--"))
    return [
        statement.strip() for statement in re.split(r";\s*\n", body + "\n") if statement.strip()
    ]


def run_model(
    connection: duckdb.DuckDBPyConnection,
    name: str,
    params: Mapping[str, Any] | None = None,
    **shape: Any,
) -> None:
    """Run every statement of `sql/<name>.sql` on DuckDB, binding the `$name` values it uses."""
    values = dict(params or {})
    for statement in statements_of(render_model(name, **shape)):
        used = {key: values[key] for key in _PARAMETER.findall(statement)}
        connection.execute(statement, used or None)
