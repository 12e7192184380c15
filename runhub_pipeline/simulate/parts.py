"""The business event vocabulary, and `Parts`: events as numeric columns before rendering."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from runhub_pipeline.simulate.spec import Int64s

CURRENCIES = ("USD", "EUR", "GBP", "CAD", "BRL")
EVENT_TYPES = (
    "checkout_started",
    "payment_succeeded",
    "payment_failed",
    "refund_issued",
    "form_submitted",
    "lead_created",
    "recovery_email_sent",
    "promo_email_sent",
    "onboarding_email_sent",
)
CHECKOUT, PAID, FAILED, REFUND, FORM, LEAD, RECOVERY, PROMO, ONBOARD = range(9)
MONEY = (PAID, FAILED, REFUND)
OUTCOMES = (RECOVERY, PROMO, ONBOARD)
KEY_PREFIX = ("chk_", "pay_", "pfl_", "rfd_", "frm_", "lead_")
FAILURE_CODES = ("card_declined", "insufficient_funds", "expired_card", "authentication_required")
REFUND_REASONS = ("requested_by_customer", "duplicate", "fraudulent")
FORMS = ("contact", "newsletter", "quote_request")
# Addresses the app accepted but email_norm rejects: no identity, never a quarantine reason.
INVALID_EMAILS = ("n/a", "john@localhost", "jane.doe@gmail", "<bob@example.com>", "   ")


class Parts:
    """Business events as numeric columns, one block per event type, added in type order.

    `ref` points into another block (a payment's checkout, a refund's payment) or at a run.
    """

    _DEFAULTS = {
        "session": -1,  # session index, -1 = NULL
        "other_session": 0,  # 1: the buyer came back in a session the analytics never saw
        "customer": -1,  # visitor index, -1 = NULL
        "email_form": 0,  # 0 as is, 1 upper, 2 capitalized, 3 padded, 4 invalid
        "amount": -1,
        "currency": -1,
        "ref": -1,
        "extra": 0,
    }

    def __init__(self) -> None:
        self.blocks: list[dict[str, Int64s]] = []

    def add(self, kind: int, occurred: Int64s, **columns: Any) -> None:
        assert len(self.blocks) == kind, "blocks are added in event-type order"
        n = len(occurred)
        values = {**self._DEFAULTS, **columns, "kind": kind, "occurred_us": occurred}
        self.blocks.append(
            {
                name: np.broadcast_to(np.asarray(value, dtype=np.int64), n)
                for name, value in values.items()
            }
        )

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(
            {
                name: np.concatenate([block[name] for block in self.blocks])
                for name in self.blocks[0]
            }
        )
