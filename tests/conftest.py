"""Shared fixtures: real SQLite, DuckDB and PostgreSQL databases, one throwaway each, and real
SMTP servers (aiosmtpd, see tests/smtp_server.py) that record what they accept.

PostgreSQL tests are marked `postgres`. Locally they skip when no server answers; under CI=true
they fail instead, so a missing server can never turn into a green run.
"""

from __future__ import annotations

import contextlib
import gc
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiosmtpd.controller import Controller
from dagster._core.storage.defs_state.base import _current_storage
from psycopg import sql as pg_sql

from runhub_pipeline.resources.app_db import AppDatabase, app_engine
from runhub_pipeline.resources.app_schema import migrate
from tests.smtp_server import RecordingHandler, ServerFactory, SmtpServer, free_port

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")


@pytest.fixture(autouse=True)
def no_dagster_instance_left_entered() -> Iterator[None]:
    """Fails the test that leaves a Dagster instance entered, and clears it for the next test.

    Entering a DagsterInstance makes its state storage the process's current one, and exiting it
    restores whatever was current when it was entered. `build_schedule_context` enters a second
    instance from the given instance's ref when a schedule reads `context.instance`, and exits it
    only when the context is closed (`with ... as context`). Left open, it is exited whenever the
    garbage collector finds it, possibly tests later, after the test's own instance has closed,
    and it then restores that closed instance's storage: the next Definitions load fails with
    "Attempted to resolve undefined DagsterInstance weakref", far from the cause and only in some
    test orders. Collecting here makes that happen in the test that caused it.
    """
    yield
    gc.collect()
    # Survivors are moved out of later collections, so each test's collection only walks the
    # objects it made, not everything the imports made. The price: a survivor that later becomes
    # cyclic garbage is never collected in this test process.
    gc.freeze()
    left_entered = _current_storage.get()
    if left_entered is not None:
        _current_storage.set(None)  # as Dagster does when it cannot reset; the next test is clean
        pytest.fail(
            f"a Dagster instance was left entered ({type(left_entered).__name__} is still the"
            " current state storage): close build_schedule_context with `with`, and exit every"
            " instance this test enters"
        )


PG_ADMIN_URL = os.environ.get("RUNHUB_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def _server_available() -> str | None:
    try:
        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except psycopg.OperationalError as error:
        return str(error).splitlines()[0]


@pytest.fixture(scope="session")
def postgres_database_factory() -> Iterator[Callable[[], str]]:
    """Creates throwaway PostgreSQL databases; every one is dropped at the end of the session."""
    problem = _server_available()
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required under CI=true: {problem}")
        pytest.skip(f"PostgreSQL not available: {problem}")
    created: list[str] = []

    def create() -> str:
        name = f"runhub_test_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
            connection.execute(pg_sql.SQL("create database {}").format(pg_sql.Identifier(name)))
        created.append(name)
        return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"

    yield create
    app_engine.cache_clear()
    for name in created:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as connection:
            connection.execute(
                pg_sql.SQL("drop database if exists {} with (force)").format(
                    pg_sql.Identifier(name)
                )
            )


@pytest.fixture
def sqlite_app_db(tmp_path: Path) -> AppDatabase:
    app_db = AppDatabase(url=f"sqlite:///{tmp_path / 'app.db'}")
    migrate(app_db)
    return app_db


@pytest.fixture
def postgres_app_db(postgres_database_factory: Callable[[], str]) -> Iterator[AppDatabase]:
    app_db = AppDatabase(url=postgres_database_factory())
    migrate(app_db)
    yield app_db
    # Idle pooled connections of finished tests would pile up to "too many clients".
    app_db.engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def app_db(request: pytest.FixtureRequest) -> AppDatabase:
    """The app database on both dialects: every test using it runs on SQLite and PostgreSQL."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_app_db")  # type: ignore[no-any-return]
    return request.getfixturevalue("postgres_app_db")  # type: ignore[no-any-return]


@pytest.fixture
def smtp_server_factory() -> Iterator[ServerFactory]:
    """Starts aiosmtpd servers on 127.0.0.1 and free ports; all are stopped afterwards."""
    controllers: list[Controller] = []

    def start(port: int | None = None, **smtp_options: Any) -> SmtpServer:
        handler = RecordingHandler()
        chosen = port or free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=chosen, **smtp_options)
        controller.start()
        controllers.append(controller)
        return SmtpServer("127.0.0.1", chosen, handler, controller)

    yield start
    for controller in controllers:
        with contextlib.suppress(AssertionError):  # already stopped by the test
            controller.stop()


@pytest.fixture
def smtp_server(smtp_server_factory: ServerFactory) -> SmtpServer:
    return smtp_server_factory()
