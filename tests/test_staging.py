"""Staging rules of CONTRACT §4 on exact rows, on SQLite and PostgreSQL sources."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runhub_pipeline.assets.ingest import EVENT_SOURCES, source_select, window_bound
from runhub_pipeline.resources.app_db import AppDatabase
from tests.factories import (
    analytics_event,
    business_event,
    ingest_and_stage,
    insert_rows,
    project,
    utc,
    warehouse_at,
)

W0 = utc("2026-03-01 10:00")
W1 = utc("2026-03-01 10:15")
W2 = utc("2026-03-01 10:30")
END = utc("2026-03-01 10:45")


def _bad_rows(app_db: AppDatabase) -> list[dict[str, object]]:
    """One row per quarantine rule, each breaking only that rule (and the ones after it)."""
    sqlite = app_db.dialect == "sqlite"
    at = utc("2026-03-01 10:01")
    return [
        business_event(101, "nope", "lead_created", at, at),
        business_event(102, None, "lead_created", at, at),
        business_event(103, "p1", "   ", at, at),
        business_event(104, "p1", "lead_created", "not a time" if sqlite else None, at),
        business_event(105, "p1", "lead_created", utc("2026-03-02 10:02"), at),
        business_event(106, "p1", "payment_succeeded", at, at, amount_cents=-1, currency="USD"),
        business_event(107, "p1", "refund_issued", at, at, amount_cents=None, currency="USD"),
        business_event(108, "p1", "payment_failed", at, at, amount_cents=5, currency="US"),
        business_event(109, "p1", "payment_failed", at, at, amount_cents=5, currency=None),
        business_event(110, "p1", "lead_created", at, at, payload="[1, 2]"),
        business_event(111, "p1", "lead_created", at, at, payload="null"),
    ]


EXPECTED_REASONS = {
    101: "unknown_project",
    102: "unknown_project",
    103: "missing_event_type",
    104: "bad_occurred_at",
    105: "future_occurred_at",
    106: "bad_amount",
    107: "bad_amount",
    108: "bad_currency",
    109: "bad_currency",
    110: "bad_payload",
    111: "bad_payload",
}


def test_every_quarantine_rule_with_its_reason(app_db: AppDatabase, tmp_path: Path) -> None:
    insert_rows(app_db, "projects", [project("p1")])
    insert_rows(app_db, "business_events", _bad_rows(app_db))
    at = utc("2026-03-01 10:03")
    insert_rows(
        app_db,
        "inhouse_analytics_events",
        [
            analytics_event(201, "ghost", "page_view", "s1", at, at),
            analytics_event(202, "p1", "page_view", "  ", at, at),
            analytics_event(203, "p1", "page_view", "s1", None, at),
            analytics_event(204, "p1", "page_view", "s1", utc("2026-03-03 00:00"), at),
            analytics_event(205, "p1", "page_view", "s1", at, at),
        ],
    )
    warehouse = warehouse_at(tmp_path)
    ingest_and_stage(app_db, warehouse, W0, W1)
    with warehouse.reader() as con:
        business = dict(
            con.execute(
                "select source_id, reason from quarantined_events"
                " where source_table = 'business_events'"
            ).fetchall()
        )
        analytics = dict(
            con.execute(
                "select source_id, reason from quarantined_events"
                " where source_table = 'inhouse_analytics_events'"
            ).fetchall()
        )
        raw = con.execute(
            "select raw from quarantined_events where source_id = 106"
            " and source_table = 'business_events'"
        ).fetchone()
        staged = con.execute("select event_id from stg_analytics_events").fetchall()
    assert business == EXPECTED_REASONS
    assert analytics == {
        201: "unknown_project",
        202: "missing_session",
        203: "bad_occurred_at",
        204: "future_occurred_at",
    }
    assert staged == [(205,)]
    assert raw is not None and json.loads(raw[0])["amount_cents"] == "-1"


def test_normalization(app_db: AppDatabase, tmp_path: Path) -> None:
    insert_rows(app_db, "projects", [project("p1")])
    at = utc("2026-03-01 10:01")
    insert_rows(
        app_db,
        "business_events",
        [
            business_event(
                1,
                " p1 ",
                " Payment_Succeeded ",
                at,
                at,
                amount_cents=1200,
                currency=" eur ",
                actor_email="  Ann@Shop.COM ",
                session_id=" s1 ",
                idempotency_key="  ",
                payload='{"sku": "A"}',
            ),
            business_event(2, "p1", "lead_created", at, at, actor_email="not an address"),
            business_event(3, "p1", "lead_created", at, at, actor_email="a@b.c"),
            business_event(4, "p1", "lead_created", at, at, actor_email="x <y@z.com>"),
            business_event(5, "p1", "brand_new_type", at, at),
        ],
    )
    warehouse = warehouse_at(tmp_path)
    ingest_and_stage(app_db, warehouse, W0, W1)
    with warehouse.reader() as con:
        rows = con.execute(
            "select event_id, project_id, event_type, currency, amount_cents, email_norm,"
            " session_id, idempotency_key from stg_business_events order by event_id"
        ).fetchall()
    assert rows == [
        (1, "p1", "payment_succeeded", "EUR", 1200, "ann@shop.com", "s1", None),
        (2, "p1", "lead_created", None, None, None, None, "key-2"),
        (3, "p1", "lead_created", None, None, None, None, "key-3"),
        (4, "p1", "lead_created", None, None, None, None, "key-4"),
        (5, "p1", "brand_new_type", None, None, None, None, "key-5"),
    ]


def test_dedupe_keeps_the_earliest_copy_across_windows(app_db: AppDatabase, tmp_path: Path) -> None:
    """The kept copy is the smallest (received_at, id) wherever it lands; each other copy is a
    duplicate in the window of its own received_at; re-reading an early window moves counts."""
    insert_rows(app_db, "projects", [project("p1")])
    occurred = utc("2026-03-01 09:00")
    insert_rows(
        app_db,
        "business_events",
        [
            business_event(
                10, "p1", "lead_created", occurred, utc("2026-03-01 10:20"), idempotency_key="K"
            ),
            business_event(
                11, "p1", "lead_created", occurred, utc("2026-03-01 10:35"), idempotency_key="K"
            ),
            # Same key text in another project and another letter case: not duplicates.
            business_event(
                12, "p1", "lead_created", occurred, utc("2026-03-01 10:36"), idempotency_key="k"
            ),
            business_event(
                13, "p1", "lead_created", occurred, utc("2026-03-01 10:37"), idempotency_key=None
            ),
            business_event(
                14, "p1", "lead_created", occurred, utc("2026-03-01 10:38"), idempotency_key=None
            ),
        ],
    )
    warehouse = warehouse_at(tmp_path)
    ingest_and_stage(app_db, warehouse, W0, END)
    # A copy of K commits late into the already-ingested first window: it becomes the kept one.
    insert_rows(
        app_db,
        "business_events",
        [
            business_event(
                9, "p1", "lead_created", occurred, utc("2026-03-01 10:05"), idempotency_key="K"
            )
        ],
    )
    ingest_and_stage(app_db, warehouse, W0, W1)
    with warehouse.reader() as con:
        kept = con.execute("select event_id from stg_business_events order by event_id").fetchall()
        ledger = con.execute(
            "select window_start, source_rows, staged, duplicates, quarantined from ingest_ledger"
            " where source_table = 'business_events' order by window_start"
        ).fetchall()
    assert kept == [(9,), (12,), (13,), (14,)]
    assert [(r[0], r[1:]) for r in ledger] == [
        (W0, (1, 1, 0, 0)),
        (W1, (1, 0, 1, 0)),
        (W2, (4, 3, 1, 0)),
    ]


@pytest.mark.postgres
def test_a_sqlalchemy_driver_url_reads_through_adbc(postgres_app_db: AppDatabase) -> None:
    """`postgresql+psycopg://` (SQLAlchemy's spelling) must reach ADBC as a libpq URL."""
    insert_rows(postgres_app_db, "projects", [project("p1"), project("p2")])
    spelled = AppDatabase(url=postgres_app_db.url.replace("postgresql://", "postgresql+psycopg://"))
    with spelled.source_reader() as reader:
        first = sum(b.num_rows for b in reader.batches("select project_id from projects"))
        second = sum(b.num_rows for b in reader.batches("select 1 where false"))
    assert (first, second) == (2, 0)


@pytest.mark.postgres
def test_a_windowed_postgres_read_streams_in_bounded_batches(postgres_app_db: AppDatabase) -> None:
    """The window bounds are parameters; the read must still stream (COPY), not one batch."""
    postgres_app_db.execute(
        "insert into business_events (id, project_id, event_type, occurred_at, received_at,"
        " idempotency_key) select g, 'p1', 'lead_created', timestamptz '2026-03-01 10:00Z',"
        " timestamptz '2026-03-01 10:00Z' + g * interval '1 millisecond', 'k' || g"
        " from generate_series(1, 400000) as g"
    )
    columns = EVENT_SOURCES["business_events"].columns
    sql = source_select(postgres_app_db, "business_events", columns, "window")
    bounds = [window_bound(postgres_app_db, W0), window_bound(postgres_app_db, W1)]
    with postgres_app_db.source_reader() as reader:
        sizes = [batch.num_rows for batch in reader.batches(sql, bounds)]
    assert sum(sizes) == 400000
    assert len(sizes) > 1 and max(sizes) < 400000
