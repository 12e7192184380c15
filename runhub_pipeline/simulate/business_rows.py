"""Business events as the app stores them: re-sent copies, and the forms normalization absorbs."""

from __future__ import annotations

import numpy as np
import polars as pl

from runhub_pipeline.simulate.behaviour import P_DUPLICATE
from runhub_pipeline.simulate.clock import HOUR, MINUTE, US
from runhub_pipeline.simulate.parts import (
    CHECKOUT,
    CURRENCIES,
    EVENT_TYPES,
    FAILED,
    FAILURE_CODES,
    FORM,
    FORMS,
    INVALID_EMAILS,
    KEY_PREFIX,
    LEAD,
    MONEY,
    OUTCOMES,
    PAID,
    REFUND,
    REFUND_REASONS,
)
from runhub_pipeline.simulate.quarantine import bad_counts, break_business, finish_rows
from runhub_pipeline.simulate.render import (
    Context,
    arrival_lags,
    cycle,
    lookup,
    occurred_text,
    padded,
    stored_name,
    stored_project_id,
    time_formats,
    zfill,
)
from runhub_pipeline.simulate.spec import BUSINESS_RULES


def finish_business(
    rng: np.random.Generator, parts: pl.DataFrame, context: Context
) -> tuple[pl.DataFrame, int, dict[str, int]]:
    """Render the events as stored, add re-sent copies, then break `bad_rate` of the rows."""
    rendered = _render_business(rng, parts, context)
    n = rendered.height
    # Emitters retry: the same row again, same idempotency key, received later under a new id.
    resent = rendered.filter(pl.col("resend") & pl.col("idempotency_key").is_not_null())
    resent_lag = np.where(
        rng.random(resent.height) < 0.7,
        rng.integers(US, MINUTE, resent.height),
        rng.integers(MINUTE, 30 * HOUR, resent.height),
    )
    resent = resent.with_columns(
        row=pl.col("row") + n, received_us=pl.col("received_us") + resent_lag
    )
    frame = finish_rows(rng, pl.concat([rendered, resent]), context, BUSINESS_RULES)
    duplicates = int((frame["row"] >= n).sum())
    frame = break_business(frame, context)
    bad = bad_counts(frame["bad"].to_numpy(), BUSINESS_RULES)
    return frame.drop("bad"), duplicates, bad


def _render_business(
    rng: np.random.Generator, parts: pl.DataFrame, context: Context
) -> pl.DataFrame:
    """The events as the app stores them, in the forms normalization has to absorb (letter
    case, padding, other ISO time forms, NULL keys and payloads), none breaking a rule."""
    n = parts.height
    pid = context.profile.project_id
    customer = parts["customer"].to_numpy()
    frame = parts.with_columns(
        row=pl.int_range(pl.len(), dtype=pl.Int64),
        seq=pl.int_range(pl.len(), dtype=pl.Int64).over("kind"),
        email=context.emails.gather(np.maximum(customer, 0)),
        received_us=pl.col("occurred_us") + arrival_lags(rng, n),
        offset_s=context.clock.offset_of(parts["occurred_us"].to_numpy()),
        fmt=time_formats(rng, n),
        variant=rng.integers(0, 1000, n),
        null_key=rng.random(n) < 0.01,
        null_payload=rng.random(n) < 0.03,
        resend=rng.random(n) < P_DUPLICATE,
    )
    kind = pl.col("kind")
    is_outcome = kind.is_in(list(OUTCOMES))
    seq = zfill("seq", 7)
    ref = zfill("ref", 7)
    run_id = lookup("ref", context.run_ids)
    event_type = lookup("kind", EVENT_TYPES)
    email = pl.col("email")
    email_form = pl.col("email_form")
    actor_email = (
        pl.when(pl.col("customer") < 0)
        .then(pl.lit(None, dtype=pl.Utf8))
        .when(email_form == 1)
        .then(email.str.to_uppercase())
        .when(email_form == 2)
        .then(email.str.to_titlecase())
        .when(email_form == 3)
        .then(padded(email))
        .when(email_form == 4)
        .then(cycle("variant", INVALID_EMAILS))
        .otherwise(email)
    )
    session = pl.concat_str(pl.lit(f"ses_{context.profile.number:04d}_"), zfill("session", 6))
    session = (
        pl.when(pl.col("other_session") == 1)
        .then(pl.concat_str(session, pl.lit("_b")))
        .otherwise(session)
    )
    currency = lookup("currency", CURRENCIES)
    payload = (
        pl.when(kind == CHECKOUT)
        .then(pl.format('{{"cart_id": "cart_{}", "items": {}}}', seq, pl.col("extra")))
        .when((kind == PAID) & (pl.col("ref") >= 0))
        .then(pl.format('{{"checkout": "chk_{}", "provider": "stripe"}}', ref))
        .when(kind == PAID)
        .then(pl.lit('{"provider": "invoice"}'))
        .when(kind == FAILED)
        .then(pl.format('{{"failure_code": "{}"}}', lookup("extra", FAILURE_CODES)))
        .when(kind == REFUND)
        .then(
            pl.format(
                '{{"payment": "pay_{}", "reason": "{}"}}', ref, lookup("extra", REFUND_REASONS)
            )
        )
        .when(kind == FORM)
        .then(pl.format('{{"form_id": "{}"}}', lookup("extra", FORMS)))
        .when(kind == LEAD)
        .then(pl.format('{{"form_id": "{}", "source": "form"}}', lookup("extra", FORMS)))
        .otherwise(pl.format('{{"run_id": "{}"}}', run_id))
    )
    key = (
        pl.when(is_outcome)
        .then(pl.concat_str(pl.lit("workflow:"), run_id, pl.lit(":"), email))
        .when(pl.col("null_key"))
        .then(pl.lit(None, dtype=pl.Utf8))
        .otherwise(pl.concat_str(lookup("kind", KEY_PREFIX), seq))
    )
    variant = pl.col("variant")
    return frame.select(
        "row",
        "received_us",
        "resend",
        is_money=kind.is_in(list(MONEY)),
        project_id=stored_project_id(pid),
        event_type=stored_name(event_type, padded_below=6),
        occurred_at=occurred_text(context),
        idempotency_key=key,
        actor_email=actor_email,
        session_id=pl.when(pl.col("session") >= 0).then(session),
        amount_cents=pl.when(pl.col("amount") >= 0).then(pl.col("amount")),
        currency=pl.when(variant.is_between(100, 119))
        .then(currency.str.to_lowercase())
        .when(variant.is_between(120, 129))
        .then(padded(currency))
        .otherwise(currency),
        payload=pl.when(pl.col("null_payload") & ~is_outcome).then(pl.lit(None)).otherwise(payload),
    )
