"""Business events: checkouts, payments (fast, slow, retried, never), refunds, forms, leads."""

from __future__ import annotations

import numpy as np

from runhub_pipeline.simulate.analytics import Sessions, segment_offsets
from runhub_pipeline.simulate.behaviour import (
    P_DIRECT,
    P_FAST,
    P_FOREIGN,
    P_FORM,
    P_LEAD,
    P_REFUND,
    P_RESTART,
    P_RETRY,
    P_RETRY_SUCCESS,
    P_SLOW,
)
from runhub_pipeline.simulate.clock import DAY, HOUR, MINUTE, US
from runhub_pipeline.simulate.parts import (
    CHECKOUT,
    CURRENCIES,
    FAILED,
    FAILURE_CODES,
    FORM,
    FORMS,
    LEAD,
    PAID,
    REFUND,
    REFUND_REASONS,
    Parts,
)
from runhub_pipeline.simulate.projects import Profile
from runhub_pipeline.simulate.spec import Int64s
from runhub_pipeline.simulate.workflows import Checkouts, Run, outcome_events


def _prices(rng: np.random.Generator, n: int) -> Int64s:
    cents = np.round(rng.lognormal(np.log(4500), 0.9, n) / 100) * 100
    return np.maximum(99, cents - (rng.random(n) < 0.6)).astype(np.int64)


def _email_forms(rng: np.random.Generator, n: int, upper: float, capital: float) -> Int64s:
    u = rng.random(n)
    forms = np.where(u < upper, 1, np.where(u < upper + capital, 2, 0))
    forms = np.where((u > 0.99) & (u <= 0.995), 4, forms)  # the app accepted a junk address
    return np.where(u > 0.995, 3, forms).astype(np.int64)


def business_events(
    rng: np.random.Generator,
    profile: Profile,
    sessions: Sessions,
    runs: list[Run],
    n_customers: int,
) -> Parts:
    """Checkouts, payments (fast, slow, retried, never), refunds, forms, leads, outcome mail."""
    parts = Parts()
    cat = np.concatenate
    n_sessions = len(sessions.start)
    home = CURRENCIES.index(profile.persona.currency)

    chk_session = np.flatnonzero(sessions.checkout)
    n = len(chk_session)
    started = sessions.start[chk_session] + sessions.duration[chk_session]
    started += rng.integers(5 * US, 90 * US, n)
    buyer = sessions.visitor[chk_session]
    amount = _prices(rng, n)
    foreign = (home + 1 + rng.integers(0, len(CURRENCIES) - 1, n)) % len(CURRENCIES)
    currency = np.where(rng.random(n) < P_FOREIGN, foreign, home)
    email_form = _email_forms(rng, n, 0.0, 0.0)
    restarted = rng.random(n) < P_RESTART
    restart_at = started + rng.integers(MINUTE, 10 * MINUTE, n)
    last_start = np.where(restarted, restart_at, started)
    last_checkout = np.where(restarted, n + np.cumsum(restarted) - 1, np.arange(n))
    items = rng.integers(1, 6, n)
    parts.add(
        CHECKOUT,
        cat([started, restart_at[restarted]]),
        session=cat([chk_session, chk_session[restarted]]),
        customer=cat([buyer, buyer[restarted]]),
        email_form=cat([email_form, email_form[restarted]]),
        amount=cat([amount, amount[restarted]]),
        currency=cat([currency, currency[restarted]]),
        extra=cat([items, items[restarted]]),
    )

    u = rng.random(n)
    fast = u < P_FAST
    slow = (u >= P_FAST) & (u < P_FAST + P_SLOW)
    retry = (u >= P_FAST + P_SLOW) & (u < P_FAST + P_SLOW + P_RETRY)
    n_fail = np.where(retry, rng.integers(1, 4, n), 0)
    fail_gaps = rng.integers(20 * US, 4 * MINUTE, int(n_fail.sum()))
    fail_at = np.repeat(last_start, n_fail) + segment_offsets(fail_gaps, n_fail)
    last_fail = np.zeros(n, dtype=np.int64)
    last_fail[retry] = fail_at[np.cumsum(n_fail[retry]) - 1] if len(fail_at) else 0
    fast_delay = np.clip(rng.exponential(3 * MINUTE, n), 15 * US, 29 * MINUTE + 50 * US)
    slow_delay = np.exp(rng.uniform(np.log(31 * MINUTE), np.log(47.5 * HOUR), n))
    retry_paid = retry & (rng.random(n) < P_RETRY_SUCCESS)
    paid = fast | slow | retry_paid
    paid_at = np.where(
        fast,
        last_start + fast_delay.astype(np.int64),
        np.where(
            slow,
            last_start + slow_delay.astype(np.int64),
            last_fail + rng.integers(30 * US, 6 * MINUTE, n),
        ),
    )
    # A slow payment is found by e-mail only, often typed in another letter case.
    pay_form = np.where(slow, _email_forms(rng, n, 0.15, 0.15), _email_forms(rng, n, 0.05, 0.0))
    guest = ~slow & (rng.random(n) < 0.1)
    new_session = slow & (rng.random(n) < 0.4)
    n_direct = int(rng.poisson(P_DIRECT * n_sessions))
    direct_buyer = rng.integers(0, n_customers, n_direct)
    pay_at = cat(
        [paid_at[paid], rng.integers(profile.active_start_us, profile.active_end_us, n_direct)]
    )
    pay_amount = cat([amount[paid], _prices(rng, n_direct)])
    pay_currency = cat([currency[paid], np.full(n_direct, home)])
    pay_buyer = cat([buyer[paid], direct_buyer])
    parts.add(
        PAID,
        pay_at,
        session=cat([np.where(slow & ~new_session, -1, chk_session)[paid], np.full(n_direct, -1)]),
        other_session=cat([new_session[paid], np.zeros(n_direct, dtype=bool)]),
        customer=cat([np.where(guest, -1, buyer)[paid], direct_buyer]),
        email_form=cat([pay_form[paid], np.zeros(n_direct, dtype=np.int64)]),
        amount=pay_amount,
        currency=pay_currency,
        ref=cat([last_checkout[paid], np.full(n_direct, -1)]),
    )
    parts.add(
        FAILED,
        fail_at,
        session=np.repeat(chk_session, n_fail),
        customer=np.repeat(buyer, n_fail),
        amount=np.repeat(amount, n_fail),
        currency=np.repeat(currency, n_fail),
        extra=rng.integers(0, len(FAILURE_CODES), len(fail_at)),
    )

    refunded = np.flatnonzero(rng.random(len(pay_at)) < P_REFUND)
    share = np.where(rng.random(len(refunded)) < 0.3, rng.uniform(0.2, 0.8, len(refunded)), 1.0)
    parts.add(
        REFUND,
        pay_at[refunded] + rng.integers(DAY, 10 * DAY, len(refunded)),
        customer=pay_buyer[refunded],
        amount=np.round(pay_amount[refunded] * share),
        currency=pay_currency[refunded],
        ref=refunded,
        extra=rng.integers(0, len(REFUND_REASONS), len(refunded)),
    )

    form_session = np.flatnonzero(rng.random(n_sessions) < P_FORM)
    n_forms = len(form_session)
    form_at = sessions.start[form_session] + (
        sessions.duration[form_session] * rng.uniform(0.3, 1.0, n_forms)
    ).astype(np.int64)
    form_id = rng.integers(0, len(FORMS), n_forms)
    form_email = _email_forms(rng, n_forms, 0.03, 0.05)
    parts.add(
        FORM,
        form_at,
        session=form_session,
        customer=sessions.visitor[form_session],
        email_form=form_email,
        extra=form_id,
    )
    lead = np.flatnonzero(rng.random(n_forms) < P_LEAD)
    parts.add(
        LEAD,
        form_at[lead] + rng.integers(US, 10 * MINUTE, len(lead)),
        customer=sessions.visitor[form_session[lead]],
        email_form=form_email[lead],
        ref=lead,
        extra=form_id[lead],
    )
    checkouts = Checkouts(last_start, paid, paid_at, buyer, email_form)
    outcome_events(rng, parts, runs, checkouts, n_customers)
    return parts
