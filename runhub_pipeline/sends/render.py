"""Rendering of Run Hub e-mail: subject, HTML and plain-text parts, in every supported locale.

One HTML and one text template per kind (`templates/<kind>.html|txt`; promo and update share
`announcement`) take their wording from the locale's message catalog. HTML is rendered with
autoescaping, so values from the app database or event payloads (a product called
`<script>…`) stay text; the text part is rendered without escaping because it is never parsed as
HTML. Both environments use `StrictUndefined`: a missing context value fails the render instead
of sending an e-mail with a hole in it.

The daily digest takes its context from `build_digest_context`, which turns the KPI rows of the
reported day, the day before and the same weekday a week earlier into localized labels, insight
lines and a 14-day bar chart drawn with table cells (no images, no scripts: it shows in every
mail client, Outlook included).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Literal

from jinja2 import Environment, PackageLoader, StrictUndefined

from runhub_pipeline.sends.locales import (
    Catalog,
    format_money,
    format_number,
    format_percent,
    is_rtl,
    load_catalog,
    normalize_locale,
)

EmailKind = Literal["recovery", "promo", "update", "onboarding", "daily_digest"]
EMAIL_KINDS: tuple[EmailKind, ...] = ("recovery", "promo", "update", "onboarding", "daily_digest")
# CONTRACT §7: these carry List-Unsubscribe; the digest is a service message.
MARKETING_KINDS: frozenset[str] = frozenset({"recovery", "promo", "update", "onboarding"})

_TEMPLATE_NAMES: dict[str, str] = {
    "recovery": "recovery",
    "promo": "announcement",
    "update": "announcement",
    "onboarding": "onboarding",
    "daily_digest": "daily_digest",
}
_REQUIRED: dict[str, frozenset[str]] = {
    "recovery": frozenset({"project_name", "unsubscribe_url"}),
    "promo": frozenset({"project_name", "unsubscribe_url"}),
    "update": frozenset({"project_name", "unsubscribe_url"}),
    "onboarding": frozenset({"project_name", "unsubscribe_url"}),
    "daily_digest": frozenset(
        {
            "project_name",
            "reported_day",
            "kpi_rows",
            "col_week_before",
            "insights",
            "alerts",
            "abandoned_open",
            "chart",
        }
    ),
}
_OPTIONAL: dict[str, dict[str, Any]] = {
    "recovery": {"product_name": None, "checkout_url": None},
    "promo": {"title": None, "body": None, "cta_url": None, "cta_label": None},
    "update": {"title": None, "body": None, "cta_url": None, "cta_label": None},
    "onboarding": {"recipient_name": None, "cta_url": None},
    "daily_digest": {"overview_url": None},
}
_LINK_KEYS = ("checkout_url", "cta_url", "overview_url")
_TEXT_KEYS = ("product_name", "title", "body", "cta_label", "recipient_name")

NO_VALUE = "—"
CHART_DAYS = 14
CHART_HEIGHT_PX = 80
_TEXT_BAR_WIDTH = 20


class RenderError(ValueError):
    """The context cannot make this e-mail (unknown kind, missing values)."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


@functools.cache
def _environments() -> tuple[Environment, Environment]:
    loader = PackageLoader("runhub_pipeline.sends", "templates")
    options: dict[str, Any] = {
        "loader": loader,
        "undefined": StrictUndefined,
        "trim_blocks": True,
        "lstrip_blocks": True,
    }
    return Environment(autoescape=True, **options), Environment(autoescape=False, **options)


def _one_line(text: str) -> str:
    # Values from the app database may hold line breaks; a subject is one line by nature, and
    # build_message rejects CR/LF in headers as the last line of defence.
    return " ".join(text.split())


def _text(value: object) -> str | None:
    """Optional text from run params or payloads, which may hold anything: blank or
    structured values count as absent, numbers as their text."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return None
    text = str(value).strip()
    return text or None


def _web_link(value: object) -> str | None:
    """An http(s) link or None: a `javascript:` link from a payload must not become a button."""
    if not isinstance(value, str):
        return None
    link = value.strip()
    return link if re.match(r"^https?://[^\s<>\"]+$", link, re.IGNORECASE) else None


def _paragraphs(text: str) -> list[list[str]]:
    """User-written text as paragraphs (split on blank lines) of lines."""
    blocks = re.split(r"\n\s*\n", text.replace("\r\n", "\n").strip())
    return [[line.strip() for line in block.split("\n")] for block in blocks if block.strip()]


def _kind_values(kind: str, catalog: Catalog, values: dict[str, Any]) -> tuple[str, str]:
    """Fill in kind-specific values; returns (subject, preheader)."""
    project = values["project_name"]
    if kind == "recovery":
        product = values["product_name"]
        if product:
            return catalog.text("recovery.subject_product", product=product), catalog.text(
                "recovery.intro_product", product=product, project=project
            )
        return catalog.text("recovery.subject", project=project), catalog.text(
            "recovery.intro", project=project
        )
    if kind in ("promo", "update"):
        title = values["title"] or catalog.text(f"{kind}.subject", project=project)
        body = values["body"] or catalog.text(f"{kind}.body", project=project)
        values["title"] = title
        values["paragraphs"] = _paragraphs(body) or [
            [catalog.text(f"{kind}.body", project=project)]
        ]
        values["cta_label"] = values["cta_label"] or catalog.text(f"{kind}.cta")
        return title, " ".join(values["paragraphs"][0])
    if kind == "onboarding":
        return catalog.text("onboarding.subject", project=project), catalog.text(
            "onboarding.intro", project=project
        )
    day_text = catalog.long_date(values["reported_day"])
    values["reported_day_text"] = day_text
    preheader = values["insights"][0] if values["insights"] else ""
    return catalog.text("digest.subject", project=project, date=day_text), preheader


def render_email(kind: str, locale: str | None, context: Mapping[str, Any]) -> RenderedEmail:
    """Render one e-mail of `kind` in `locale` (any app tag; normalized per CONTRACT §6).

    Context, all values plain text (never pre-escaped HTML):
      - every kind: `project_name`;
      - marketing kinds: `unsubscribe_url` (the recipient's one-click link, see
        `message.unsubscribe_link`);
      - recovery: optional `product_name`, `checkout_url`;
      - promo / update: optional `title` (also the subject), `body` (blank lines separate
        paragraphs), `cta_url`, `cta_label`; localized defaults otherwise;
      - onboarding: optional `recipient_name`, `cta_url`;
      - daily_digest: the mapping returned by `build_digest_context`.
    Optional links that are not http(s) are dropped.

    Raises:
        RenderError: unknown kind or missing required values.
    """
    if kind not in _TEMPLATE_NAMES:
        raise RenderError(f"unknown e-mail kind {kind!r}; expected one of {EMAIL_KINDS}")
    missing = sorted(_REQUIRED[kind] - context.keys())
    if missing:
        raise RenderError(f"render_email({kind!r}) is missing {', '.join(missing)}")
    lang = normalize_locale(locale)
    if context.get("locale", lang) != lang:
        raise RenderError(f"the context was built for {context['locale']!r}, not {lang!r}")
    catalog = load_catalog(lang)
    values: dict[str, Any] = {**_OPTIONAL[kind], **context}
    if not _text(values["project_name"]):
        raise RenderError(f"render_email({kind!r}) needs a non-empty project_name")
    values["project_name"] = _text(values["project_name"])
    for key in _TEXT_KEYS:
        if key in values:
            values[key] = _text(values[key])
    for key in _LINK_KEYS:
        if key in values:
            values[key] = _web_link(values[key])
    if kind in MARKETING_KINDS and _web_link(values["unsubscribe_url"]) is None:
        raise RenderError(
            f"unsubscribe_url must be an http(s) link, got {values['unsubscribe_url']!r}"
        )
    subject, preheader = _kind_values(kind, catalog, values)
    rtl = is_rtl(lang)
    values.update(
        t=catalog.text,
        lang=lang,
        dir="rtl" if rtl else "ltr",
        start="right" if rtl else "left",
        end="left" if rtl else "right",
        font="Tahoma, Arial, sans-serif" if rtl else "Helvetica, Arial, sans-serif",
        subject=_one_line(subject),
        preheader=_one_line(preheader),
    )
    html_env, text_env = _environments()
    name = _TEMPLATE_NAMES[kind]
    html = html_env.get_template(f"{name}.html").render(values)
    text = text_env.get_template(f"{name}.txt").render(values)
    return RenderedEmail(subject=values["subject"], html=html, text=_tidy_text(text))


def _tidy_text(text: str) -> str:
    lines = [line.rstrip() for line in text.strip().splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)) + "\n"


# --- daily digest ---------------------------------------------------------------------------

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
_SPECS = {spec.column: spec for spec in DIGEST_KPIS}
# alert_counts_15min columns, shown with the KPI label of the same events.
ALERT_LABELS: dict[str, str] = {
    "payment_failed": "payments_failed",
    "checkout_started": "checkouts_started",
    "abandoned_checkouts": "abandoned_checkouts",
}
INSIGHT_METRICS = ("revenue_cents", "orders", "sessions", "leads", "payments_failed")
# Same weekday a week earlier is the fair comparison (shops have weekly rhythms), so it speaks
# up at 10%; the day before differs by weekday as well, so it needs a bigger move to be news.
WEEK_INSIGHT_PERCENT = 10.0
DAY_INSIGHT_PERCENT = 25.0
# A count that moves from 2 to 3 is +50% and noise; counts below this are not worth a line.
MIN_COUNT_FOR_INSIGHT = 5


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


def _metric(kpis: KpiValues | None, column: str) -> float | int | None:
    """A KPI value; a day without a row means zeros (CONTRACT §5) except for the NULL rate."""
    value = (kpis or {}).get(column)
    if value is None:
        return None if _SPECS[column].unit == "rate" else 0
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


def _tone(spec: KpiSpec, current: float | int | None, previous: float | int | None) -> Tone:
    if current is None or previous is None or current == previous:
        return "neutral"
    return "good" if (current > previous) == spec.higher_is_better else "bad"


def format_kpi(column: str, value: float | int | None, currency: str, locale: str) -> str:
    lang = normalize_locale(locale)
    unit = _SPECS[column].unit
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
    if _SPECS[column].unit == "count" and max(abs(current), abs(previous)) < MIN_COUNT_FOR_INSIGHT:
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
    if all(_metric(kpis_today, column) == 0 for column in ("sessions", "orders", "leads")):
        lines.append(catalog.text("insight.quiet"))
    for column in INSIGHT_METRICS:
        current = _metric(kpis_today, column) or 0
        for previous_kpis, reference, threshold in (
            (kpis_week_before, week_reference, WEEK_INSIGHT_PERCENT),
            (kpis_day_before, day_reference, DAY_INSIGHT_PERCENT),
        ):
            previous = _metric(previous_kpis, column) or 0
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


def _chart(
    catalog: Catalog,
    column: str,
    reported_day: date,
    daily_kpis: Mapping[date, KpiValues],
    currency: str,
) -> Chart:
    days = [reported_day - timedelta(days=offset) for offset in range(CHART_DAYS - 1, -1, -1)]
    values = [max(0.0, float(_metric(daily_kpis.get(day), column) or 0)) for day in days]
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
    if chart_metric not in _SPECS:
        raise RenderError(f"chart_metric must be one of {sorted(_SPECS)}, got {chart_metric!r}")
    today = daily_kpis.get(reported_day, {})
    day_before = daily_kpis.get(reported_day - timedelta(days=1), {})
    week_before = daily_kpis.get(reported_day - timedelta(days=7), {})
    rows = []
    for spec in DIGEST_KPIS:
        current = _metric(today, spec.column)
        previous_day = _metric(day_before, spec.column)
        previous_week = _metric(week_before, spec.column)
        rows.append(
            KpiRow(
                column=spec.column,
                label=catalog.text(f"kpi.{spec.column}"),
                value=format_kpi(spec.column, current, currency, lang),
                change_day=format_change(current, previous_day, lang),
                change_week=format_change(current, previous_week, lang),
                tone_day=_tone(spec, current, previous_day),
                tone_week=_tone(spec, current, previous_week),
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
