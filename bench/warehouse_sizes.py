"""How a warehouse file's space divides among its tables: what each publish of the snapshot reads.

Each run that writes the warehouse publishes the snapshot once: it reads the whole file and
rewrites the chunks that changed, so the tick grows with the file (BENCHMARKS.md). This prints
the file's used and free blocks and each table's share of the used ones, from DuckDB's own storage
metadata (read-only, safe on a published snapshot):

    .venv/bin/python -m bench.warehouse_sizes "$RUNHUB_HOME/warehouse.duckdb"
"""

from __future__ import annotations

import argparse
from pathlib import Path

import duckdb

from runhub_pipeline.resources.warehouse import DUCKDB_BLOCK_BYTES


def table_blocks(connection: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Blocks each table's column segments occupy (small segments may share a block)."""
    tables = [
        row[0]
        for row in connection.execute(
            "select table_name from duckdb_tables() where not temporary"
        ).fetchall()
    ]
    blocks = {}
    for table in tables:
        row = connection.execute(
            "select count(distinct block_id) from pragma_storage_info(?) where block_id >= 0",
            [table],
        ).fetchone()
        blocks[table] = int(row[0]) if row else 0
    return blocks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("warehouse", type=Path)
    path = parser.parse_args().warehouse
    connection = duckdb.connect(str(path), read_only=True)
    size = connection.execute(
        "select total_blocks, used_blocks, free_blocks from pragma_database_size()"
    ).fetchone()
    assert size is not None
    total, used, free = (int(value) for value in size)
    print(
        f"{path}: {path.stat().st_size / 2**20:,.0f} MiB on disk, {total:,} blocks:"
        f" {used:,} used, {free:,} free ({free / max(total, 1):.0%})"
    )
    blocks = table_blocks(connection)
    counted = sum(blocks.values()) or 1
    for table, count in sorted(blocks.items(), key=lambda item: -item[1]):
        if count:
            share = count / counted
            print(f"  {table:<32} {count * DUCKDB_BLOCK_BYTES / 2**20:>10,.1f} MiB {share:>6.1%}")


if __name__ == "__main__":
    main()
