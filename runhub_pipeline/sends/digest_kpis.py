"""The KPIs a daily digest shows: their values, changes and tones, and the insight lines.

"Revenue up 23% on last Tuesday": each headline metric is compared with the same weekday a week
earlier and with the day before, in the recipient's locale.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Literal

from runhub_pipeline.sends.locales import (
    Catalog,
    format_money,
    format_number,
    format_percent,
    load_catalog,
    normalize_locale,
)

Tone = Literal["good", "bad", "neutral"]
KpiValues = Mapping[str, float | int | None]


@dataclass(frozen=True)
class KpiSpec:
    column: str  # a business_kpi_daily column
    unit: Literal["money", "count", "rate"]
    higher_is_better: bool


DIGEST_KPIS: tuple[KpiSpec, ...] = (
    KpiSpec("revenue_cents", "money", True),
    KpiSpec("net_revenue_cents", "money", True),
    KpiSpec("orders", "count", True),
    KpiSpec("conversion_rate", "rate", True),
    KpiSpec("sessions", "count", True),
    KpiSpec("visitors", "count", True),
    KpiSpec("leads", "count", True),
    KpiSpec("checkouts_started", "count", True),
    KpiSpec("abandoned_checkouts", "count", False),
    KpiSpec("recovered_revenue_cents", "money", True),
    KpiSpec("payments_failed", "count", False),
)
KPI_SPECS = {spec.column: spec for spec in DIGEST_KPIS}
# The business_kpi_daily columns a digest reads: the ones it shows.
KPI_COLUMNS = tuple(KPI_SPECS)
NO_VALUE = "—"

INSIGHT_METRICS = ("revenue_cents", "orders", "sessions", "leads", "payments_failed")
# Same weekday a week earlier is the fair comparison (shops have weekly rhythms), so it speaks
# up at 10%; the day before differs by weekday as well, so it needs a bigger move to be news.
WEEK_INSIGHT_PERCENT = 10.0
DAY_INSIGHT_PERCENT = 25.0
# A count that moves from 2 to 3 is +50% and noise; counts below this are not worth a line.
MIN_COUNT_FOR_INSIGHT = 5


def kpi_value(kpis: KpiValues | None, column: str) -> float | int | None:
    """A KPI value; a day without a row means zeros (CONTRACT §5) except for the NULL rate."""
    value = (kpis or {}).get(column)
    if value is None:
        return None if KPI_SPECS[column].unit == "rate" else 0
    return value


def _percent_change(current: float, previous: float) -> float:
    # Against |previous| so that net revenue going from -100 to -50 reads as a rise.
    return (current - previous) / abs(previous) * 100.0


def format_change(current: float | int | None, previous: float | int | None, locale: str) -> str:
    """The change label of a KPI: `+23%`, `-12%`, `new` (from zero), or `—` (nothing to compare).

    A change from zero has no percentage, so it reads "new" in the locale (CONTRACT §7); zero to
    zero, and a missing value (a NULL conversion rate), show a dash.
    """
    lang = normalize_locale(locale)
    if current is None or previous is None:
        return NO_VALUE
    if previous == 0:
        return NO_VALUE if current == 0 else load_catalog(lang).text("change.new")
    return format_percent(_percent_change(current, previous), lang, signed=True)


def kpi_tone(spec: KpiSpec, current: float | int | None, previous: float | int | None) -> Tone:
    if current is None or previous is None or current == previous:
        return "neutral"
    return "good" if (current > previous) == spec.higher_is_better else "bad"


def format_kpi(column: str, value: float | int | None, currency: str, locale: str) -> str:
    lang = normalize_locale(locale)
    unit = KPI_SPECS[column].unit
    if value is None:
        return NO_VALUE
    if unit == "money":
        return format_money(int(value), currency, lang)
    if unit == "rate":
        return format_percent(float(value) * 100.0, lang, decimals=1)
    return format_number(value, lang)


def _comparison_line(
    catalog: Catalog, column: str, current: float | int, previous: float | int, reference: str
) -> str | None:
    metric = catalog.text(f"insight.metric.{column}")
    if (
        KPI_SPECS[column].unit == "count"
        and max(abs(current), abs(previous)) < MIN_COUNT_FOR_INSIGHT
    ):
        return None
    if previous == 0:
        if current == 0:
            return None
        return catalog.text("insight.from_zero", metric=metric, reference=reference)
    change = _percent_change(current, previous)
    key = "insight.up" if change > 0 else "insight.down"
    percent = format_percent(abs(change), catalog.locale)
    return catalog.text(key, metric=metric, percent=percent, reference=reference)


def digest_insights(
    locale: str,
    kpis_today: KpiValues,
    kpis_day_before: KpiValues,
    kpis_week_before: KpiValues,
    abandoned_24h: int,
    recovery_enabled: bool,
    *,
    reported_day: date | None = None,
) -> list[str]:
    """Plain-language lines for the digest, e.g. "Revenue up 23% on last Tuesday".

    Each headline metric gets at most one line: against the same weekday a week earlier when
    that moved by WEEK_INSIGHT_PERCENT or more (or came from zero), else against the day before
    when that moved by DAY_INSIGHT_PERCENT or more. `reported_day` names the weekday ("last
    Tuesday"); without it the line says "the same day last week". Abandoned checkouts of the
    last 24 hours get a line saying whether automatic recovery is on.
    """
    catalog = load_catalog(normalize_locale(locale))
    if reported_day is None:
        week_reference = catalog.text("insight.reference_week")
    else:
        week_reference = catalog.text(
            "insight.reference_weekday", weekday=catalog.weekday(reported_day)
        )
    day_reference = catalog.text("insight.reference_day_before")
    lines: list[str] = []
    if all(kpi_value(kpis_today, column) == 0 for column in ("sessions", "orders", "leads")):
        lines.append(catalog.text("insight.quiet"))
    for column in INSIGHT_METRICS:
        current = kpi_value(kpis_today, column) or 0
        for previous_kpis, reference, threshold in (
            (kpis_week_before, week_reference, WEEK_INSIGHT_PERCENT),
            (kpis_day_before, day_reference, DAY_INSIGHT_PERCENT),
        ):
            previous = kpi_value(previous_kpis, column) or 0
            if previous != 0 and abs(_percent_change(current, previous)) < threshold:
                continue
            line = _comparison_line(catalog, column, current, previous, reference)
            if line is not None:
                lines.append(line)
                break
    if abandoned_24h > 0:
        abandoned = catalog.text("insight.abandoned", count=abandoned_24h)
        status = catalog.text("insight.recovery_on" if recovery_enabled else "insight.recovery_off")
        lines.append(catalog.text("insight.abandoned_status", abandoned=abandoned, status=status))
    return lines
