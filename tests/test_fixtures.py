"""The Dagster behaviour the autouse guard `no_dagster_instance_left_entered` (conftest.py)
relies on: a schedule's evaluation context opens a second instance from the given instance's ref
and keeps that instance's state storage current until the context is closed."""

import dagster as dg
from dagster._core.storage.defs_state.base import DefsStateStorage


def test_a_schedule_context_keeps_the_instance_it_opened_current_until_closed() -> None:
    with dg.instance_for_test() as instance:
        outer = DefsStateStorage.get()
        with dg.build_schedule_context(instance=instance) as context:
            opened = context.instance  # what a schedule reading context.instance does
            assert opened is not instance
            assert DefsStateStorage.get() is opened.defs_state_storage
        assert DefsStateStorage.get() is outer
    assert DefsStateStorage.get() is None
