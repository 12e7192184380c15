"""The send policy's constants and pure rules (CONTRACT §7, issue 5 item 2)."""

import re
from datetime import timedelta
from pathlib import Path

import pytest

from runhub_pipeline.models import render_model, split_statements, transpile
from runhub_pipeline.sends import policy
from runhub_pipeline.sends.policy import InvalidRunError, RunParams, parse_params


def test_contract_numbers() -> None:
    assert {
        "recover_abandoned": timedelta(minutes=60),
        "send_promo": timedelta(minutes=120),
        "onboard_users": timedelta(minutes=60),
    } == policy.RUN_COOLDOWNS
    assert policy.RECIPIENT_CAP == 1_000
    assert timedelta(hours=24) == policy.RECIPIENT_COOLDOWN
    assert timedelta(hours=24) == policy.RECOVERY_WINDOW
    assert timedelta(minutes=30) == policy.ABANDONED_AFTER
    assert timedelta(days=90) == policy.PROMO_LOOKBACK
    assert timedelta(days=7) == policy.ONBOARDING_LOOKBACK
    assert policy.HEARTBEAT_EVERY == 50
    assert policy.MAX_ATTEMPTS == 3
    assert timedelta(days=90) == policy.SEND_RETENTION
    assert policy.OUTCOME_EVENTS == {
        "recover_abandoned": "recovery_email_sent",
        "send_promo": "promo_email_sent",
        "onboard_users": "onboarding_email_sent",
    }


def test_keys() -> None:
    assert policy.send_key("r1", "a@x.com") == "workflow:r1:a@x.com"
    assert policy.outcome_key("r1", "a@x.com") == "workflow:r1:a@x.com:sent"
    assert policy.digest_key("p1", "2026-03-29") == "digest:p1:2026-03-29"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (" Ann@Example.COM ", "ann@example.com"),
        ("no-at-sign", None),
        ("a@b.c", None),
        ("a b@x.com", None),
        (None, None),
        (42, None),
    ],
)
def test_normalize_email(raw: object, expected: str | None) -> None:
    assert policy.normalize_email(raw) == expected


@pytest.mark.parametrize(
    "email",
    ["a,b@x.com", "a;b@x.com", 'a"b@x.com', "üser@x.com", "a@-x.com", "a@x..com", "(a)@x.com"],
)
def test_addresses_the_message_layer_refuses_are_invalid(email: str) -> None:
    assert policy.address_problem(email) is not None


@pytest.mark.parametrize("email", ["a@x.com", "o'neil+tag@shop.example.co.uk", "x_y@a-b.io"])
def test_valid_addresses(email: str) -> None:
    assert policy.address_problem(email) is None


def test_parse_params_accepts_app_shapes() -> None:
    assert parse_params("send_promo", None) == RunParams()
    assert parse_params("send_promo", "null") == RunParams()
    update = parse_params("send_promo", '{"isUpdate": true, "locale": "ar-EG", "title": "Hi"}')
    assert update.is_update and update.locale == "ar-EG" and update.content == {"title": "Hi"}
    assert parse_params("onboard_users", {"emails": ["a@x.com"]}).emails == ("a@x.com",)
    assert parse_params("recover_abandoned", {"auto": True, "as_of": "x"}) == RunParams()


@pytest.mark.parametrize(
    ("action", "params", "message"),
    [
        ("post_update", None, "unknown action 'post_update'"),
        ("delete_everything", "{}", "unknown action 'delete_everything'"),
        (None, "{}", "unknown action None"),
        ("send_promo", "{not json", "not valid JSON"),
        ("send_promo", "[1, 2]", "expected a JSON object, got list"),
        ("send_promo", '{"isUpdate": "yes"}', "isUpdate must be true or false"),
        ("onboard_users", '{"isUpdate": true}', "isUpdate is only valid for send_promo"),
        ("send_promo", '{"locale": 5}', "locale must be a string"),
        ("send_promo", '{"emails": "a@x.com"}', "emails must be a list of strings"),
        ("recover_abandoned", '{"emails": ["a@x.com"]}', "takes no emails list"),
        ("send_promo", '{"title": 3}', "title must be strings"),
    ],
)
def test_parse_params_rejects_with_a_clear_message(
    action: object, params: object, message: str
) -> None:
    with pytest.raises(InvalidRunError, match=re.escape(message)):
        parse_params(action, params)


def test_kinds_and_labels() -> None:
    update = RunParams(is_update=True)
    assert policy.email_kind("recover_abandoned", RunParams()) == "recovery"
    assert policy.email_kind("onboard_users", RunParams()) == "onboarding"
    assert policy.email_kind("send_promo", RunParams()) == "promo"
    assert policy.email_kind("send_promo", update) == "update"
    assert policy.action_label("send_promo", update) == "post_update"
    assert policy.action_label("send_promo", RunParams()) == "send_promo"


def test_failure_text_keeps_the_reason_first() -> None:
    text = policy.failure("delivery", "smtp host:25: connection refused\nsecond line")
    assert text == "delivery: smtp host:25: connection refused"
    assert policy.failure_reason(text) == "delivery"
    assert policy.failure_reason(None) == "unknown"


@pytest.mark.parametrize(
    "name",
    sorted(
        path.stem for path in (Path(policy.__file__).parents[1] / "sql" / "sends").glob("*.sql")
    ),
)
def test_recipient_sql_parses_and_transpiles(name: str) -> None:
    """Every send query parses with sqlglot and has a PostgreSQL form (STYLE: SQL)."""
    sql = render_model(f"sends/{name}", columns=("sessions", "orders"))
    [statement] = split_statements(sql)
    assert statement is not None
    assert transpile(sql, write="postgres")
    assert "{{" not in sql and "{%" not in sql
