"""The daily digest's render context: KPI rows, alerts, insights and a 14-day bar chart.

`build_digest_context` turns the KPI rows of the reported day, the day before and the same
weekday a week earlier into localized labels, insight lines and a 14-day bar chart drawn with
table cells (no images, no scripts: it shows in every mail client, Outlook included).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from runhub_pipeline.sends.digest_kpis import (
    DIGEST_KPIS,
    KPI_SPECS,
    KpiValues,
    Tone,
    digest_insights,
    format_change,
    format_kpi,
    kpi_tone,
    kpi_value,
)
from runhub_pipeline.sends.locales import Catalog, format_number, load_catalog, normalize_locale
from runhub_pipeline.sends.render import RenderError

CHART_DAYS = 14
CHART_HEIGHT_PX = 80
_TEXT_BAR_WIDTH = 20
# alert_counts_15min columns, shown with the KPI label of the same events.
ALERT_LABELS: dict[str, str] = {
    "payment_failed": "payments_failed",
    "checkout_started": "checkouts_started",
    "abandoned_checkouts": "abandoned_checkouts",
}


@dataclass(frozen=True)
class KpiRow:
    column: str
    label: str
    value: str
    change_day: str
    change_week: str
    tone_day: Tone
    tone_week: Tone


@dataclass(frozen=True)
class AlertRow:
    label: str
    value: str


@dataclass(frozen=True)
class ChartBar:
    day: date
    day_label: str  # day of month under the bar
    title: str  # "Mar 3: $12.34", shown on hover
    height_px: int
    is_reported_day: bool


@dataclass(frozen=True)
class Chart:
    title: str
    peak: str  # the tallest bar's value, printed above the chart as its scale
    height_px: int
    bars: tuple[ChartBar, ...]
    text_lines: tuple[str, ...]


def _chart(
    catalog: Catalog,
    column: str,
    reported_day: date,
    daily_kpis: Mapping[date, KpiValues],
    currency: str,
) -> Chart:
    days = [reported_day - timedelta(days=offset) for offset in range(CHART_DAYS - 1, -1, -1)]
    values = [max(0.0, float(kpi_value(daily_kpis.get(day), column) or 0)) for day in days]
    peak = max(values)
    bars: list[ChartBar] = []
    text_lines: list[str] = []
    for day, value in zip(days, values, strict=True):
        shown = format_kpi(column, value, currency, catalog.locale)
        # A non-zero day keeps a visible sliver, so "small" never looks like "nothing".
        height = 0 if value == 0 else max(2, round(value / peak * CHART_HEIGHT_PX))
        width = 0 if value == 0 else max(1, round(value / peak * _TEXT_BAR_WIDTH))
        label = catalog.short_date(day)
        bars.append(
            ChartBar(
                day=day,
                day_label=str(day.day),
                title=catalog.text("common.label_value", label=label, value=shown),
                height_px=height,
                is_reported_day=day == reported_day,
            )
        )
        text_lines.append(f"{label:<8} {'█' * width:<{_TEXT_BAR_WIDTH}} {shown}")
    return Chart(
        title=catalog.text("digest.chart_title", metric=catalog.text(f"kpi.{column}")),
        peak=format_kpi(column, peak, currency, catalog.locale),
        height_px=CHART_HEIGHT_PX,
        bars=tuple(bars),
        text_lines=tuple(text_lines),
    )


def build_digest_context(
    locale: str | None,
    *,
    project_name: str,
    reported_day: date,
    currency: str,
    daily_kpis: Mapping[date, KpiValues],
    alert_counts: Mapping[str, int],
    abandoned_open: int,
    abandoned_24h: int,
    recovery_enabled: bool,
    overview_url: str | None = None,
    chart_metric: str = "revenue_cents",
) -> dict[str, Any]:
    """The `render_email("daily_digest", …)` context for one project and reported day.

    Args:
        daily_kpis: `business_kpi_daily` rows by local day, covering at least the 14 days up to
            `reported_day` and the day a week before it; a missing day means zeros.
        alert_counts: sums of `alert_counts_15min` over the reported day by column
            (`payment_failed`, `checkout_started`, `abandoned_checkouts`).
        abandoned_open: `run_overview.abandoned_open`.
        abandoned_24h: checkouts abandoned in the last 24 hours (insight line).
        recovery_enabled: `projects.auto_recover_abandoned`.
    """
    lang = normalize_locale(locale)
    catalog = load_catalog(lang)
    unknown = sorted(set(alert_counts) - ALERT_LABELS.keys())
    if unknown:
        raise RenderError(f"unknown alert counts {unknown}; expected {sorted(ALERT_LABELS)}")
    if chart_metric not in KPI_SPECS:
        raise RenderError(f"chart_metric must be one of {sorted(KPI_SPECS)}, got {chart_metric!r}")
    today = daily_kpis.get(reported_day, {})
    day_before = daily_kpis.get(reported_day - timedelta(days=1), {})
    week_before = daily_kpis.get(reported_day - timedelta(days=7), {})
    rows = []
    for spec in DIGEST_KPIS:
        current = kpi_value(today, spec.column)
        previous_day = kpi_value(day_before, spec.column)
        previous_week = kpi_value(week_before, spec.column)
        rows.append(
            KpiRow(
                column=spec.column,
                label=catalog.text(f"kpi.{spec.column}"),
                value=format_kpi(spec.column, current, currency, lang),
                change_day=format_change(current, previous_day, lang),
                change_week=format_change(current, previous_week, lang),
                tone_day=kpi_tone(spec, current, previous_day),
                tone_week=kpi_tone(spec, current, previous_week),
            )
        )
    alerts = [
        AlertRow(
            label=catalog.text(f"kpi.{ALERT_LABELS[name]}"),
            value=format_number(alert_counts.get(name, 0), lang),
        )
        for name in ALERT_LABELS
    ]
    return {
        "locale": lang,
        "project_name": project_name,
        "reported_day": reported_day,
        "kpi_rows": rows,
        "col_week_before": catalog.text(
            "digest.col_week_before", weekday=catalog.weekday(reported_day)
        ),
        "insights": digest_insights(
            lang,
            today,
            day_before,
            week_before,
            abandoned_24h,
            recovery_enabled,
            reported_day=reported_day,
        ),
        "alerts": alerts,
        "abandoned_open": format_number(abandoned_open, lang),
        "chart": _chart(catalog, chart_metric, reported_day, daily_kpis, currency),
        "overview_url": overview_url,
    }
