"""How visitors and buyers behave: the probabilities sessions, checkouts and payments draw from."""

from __future__ import annotations

# Behaviour per session and per checkout; EVENTS_PER_SESSION turns events_per_day into sessions.
PAGE_STOP = 0.4  # page views per session are geometric, mean 1 / 0.4
P_CLICK = 0.05
P_CHECKOUT = 0.08
P_RESTART = 0.08  # a second checkout_started in the same session: one payment matches both
P_FAST, P_SLOW, P_RETRY = 0.55, 0.15, 0.08  # the other 22% of checkouts are never paid
P_RETRY_SUCCESS = 0.7
P_FORM = 0.03
P_LEAD = 0.7
P_REFUND = 0.04
P_DIRECT = 0.004  # payments without a checkout (invoices), per session
P_DUPLICATE = 0.02
P_FOREIGN = 0.03
EVENTS_PER_SESSION = (
    1
    + 1 / PAGE_STOP
    + P_CLICK
    + (1 + P_DUPLICATE)
    * (
        P_CHECKOUT
        * (
            1
            + P_RESTART
            + (P_FAST + P_SLOW + P_RETRY * P_RETRY_SUCCESS) * (1 + P_REFUND)
            + P_RETRY * 2  # mean failures of a retried checkout
            + 0.15  # recovery e-mails, when the project auto-recovers
        )
        + P_FORM * (1 + P_LEAD)
        + P_DIRECT
    )
)
