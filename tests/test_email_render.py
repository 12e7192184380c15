"""Rendering of every e-mail kind in every locale, escaping, and the daily digest's numbers."""

from __future__ import annotations

import json
import re
import string
from datetime import date, timedelta
from importlib import resources
from typing import Any

import pytest

from runhub_pipeline.sends.digest_context import CHART_DAYS, CHART_HEIGHT_PX, build_digest_context
from runhub_pipeline.sends.digest_kpis import digest_insights, format_change
from runhub_pipeline.sends.locales import (
    PLURAL_CATEGORIES,
    SUPPORTED_LOCALES,
    format_money,
    format_percent,
    is_rtl,
    load_catalog,
    normalize_locale,
)
from runhub_pipeline.sends.render import EMAIL_KINDS, RenderError, render_email

NNBSP = "\u202f"
NBSP = "\u00a0"
LRM = "\u200e"
EN_DASH = "\u2013"  # German sets a spaced en dash where English uses an em dash
TUESDAY = date(2026, 3, 3)
SCRIPT = "<script>alert(1)</script>"
HTML_TAG = re.compile(r"<\s*/?\s*[a-zA-Z!][^>]*>")


def daily_kpis(reported_day: date = TUESDAY) -> dict[date, dict[str, Any]]:
    """Fifteen days of KPI rows ending on `reported_day`, with a few awkward ones."""
    rows: dict[date, dict[str, Any]] = {}
    for offset in range(15):
        rows[reported_day - timedelta(days=offset)] = {
            "revenue_cents": 10_000 + offset * 100,
            "net_revenue_cents": 9_000,
            "orders": 20,
            "sessions": 400,
            "visitors": 300,
            "leads": 10,
            "checkouts_started": 30,
            "abandoned_checkouts": 5,
            "recovered_revenue_cents": 0,
            "payments_failed": 2,
            "conversion_rate": 0.05,
        }
    rows[reported_day] = {
        **rows[reported_day],
        "revenue_cents": 12_300,
        "recovered_revenue_cents": 1_500,  # from zero on both comparison days: "new"
        "orders": 16,  # -20% against a week earlier
    }
    rows[reported_day - timedelta(days=7)]["revenue_cents"] = 10_000  # +23% on last Tuesday
    return rows


def digest_context(locale: str, **overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "project_name": "Acme Store",
        "reported_day": TUESDAY,
        "currency": "EUR",
        "daily_kpis": daily_kpis(),
        "alert_counts": {"payment_failed": 2, "checkout_started": 30, "abandoned_checkouts": 5},
        "abandoned_open": 4,
        "abandoned_24h": 3,
        "recovery_enabled": False,
        "overview_url": "https://app.runhub.example/projects/p1",
        **overrides,
    }
    return build_digest_context(locale, **arguments)


def context_for(kind: str, locale: str, **overrides: Any) -> dict[str, Any]:
    if kind == "daily_digest":
        return {**digest_context(locale), **overrides}
    base: dict[str, Any] = {
        "project_name": "Acme Store",
        "unsubscribe_url": "https://app.runhub.example/unsubscribe?project_id=p1&email=a%40b.com",
    }
    extra: dict[str, dict[str, Any]] = {
        "recovery": {"product_name": "Trail Shoes", "checkout_url": "https://shop.example/c/1"},
        "promo": {"body": "Spring sale.\n\nEverything is 20% off.", "cta_url": "https://s.example"},
        "update": {"title": "Version 2 is here", "cta_url": "https://shop.example/news"},
        "onboarding": {"recipient_name": "Sam", "cta_url": "https://shop.example/start"},
    }
    return {**base, **extra[kind], **overrides}


@pytest.mark.parametrize("locale", SUPPORTED_LOCALES)
@pytest.mark.parametrize("kind", EMAIL_KINDS)
def test_every_kind_renders_in_every_locale(kind: str, locale: str) -> None:
    rendered = render_email(kind, locale, context_for(kind, locale))

    direction = "rtl" if locale == "ar" else "ltr"
    assert f'<html lang="{locale}" dir="{direction}">' in rendered.html
    assert rendered.subject and "\n" not in rendered.subject
    assert "Acme Store" in rendered.html and "Acme Store" in rendered.text
    assert not HTML_TAG.search(rendered.text), "the text part must be plain text"
    assert "&lt;" not in rendered.text and "&amp;" not in rendered.text
    assert "<script" not in rendered.html and "<img" not in rendered.html


@pytest.mark.parametrize("kind", EMAIL_KINDS)
def test_translations_differ_from_english(kind: str) -> None:
    english = render_email(kind, "en", context_for(kind, "en"))
    for locale in ("ar", "fr", "es", "de"):
        rendered = render_email(kind, locale, context_for(kind, locale))
        if kind != "update":  # its subject is the caller's title in every locale
            assert rendered.subject != english.subject, locale
        assert rendered.text != english.text, locale


def test_arabic_is_right_to_left_and_app_tags_are_normalized() -> None:
    rendered = render_email("onboarding", "ar-EG", context_for("onboarding", "ar"))

    assert '<html lang="ar" dir="rtl">' in rendered.html
    assert 'dir="rtl" lang="ar"' in rendered.html  # repeated for clients that drop <html>
    assert "text-align:right" in rendered.html
    assert rendered.subject == "مرحبًا بك في Acme Store"
    fallback = render_email("onboarding", "pt-BR", context_for("onboarding", "en"))
    assert '<html lang="en" dir="ltr">' in fallback.html


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        (None, "en"),
        ("", "en"),
        ("ar-EG", "ar"),
        ("AR_eg", "ar"),
        ("fr", "fr"),
        ("es-419", "es"),
        ("de_AT", "de"),
        ("EN-gb", "en"),
        ("pt-BR", "en"),
        ("arabic", "en"),
        (" fr-CA ", "fr"),
    ],
)
def test_normalize_locale(tag: str | None, expected: str) -> None:
    assert normalize_locale(tag) == expected


def test_is_rtl() -> None:
    assert is_rtl("ar-SA") and not is_rtl("fr") and not is_rtl(None)


def test_payload_values_stay_inert_in_html() -> None:
    context = context_for("recovery", "en", product_name=SCRIPT, project_name='Acme "<b>"')
    rendered = render_email("recovery", "en", context)

    assert SCRIPT not in rendered.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered.html
    assert "<b>" not in rendered.html
    assert SCRIPT in rendered.text  # plain text shows the name as written; nothing parses it
    assert rendered.subject == f"Still thinking about {SCRIPT}?"


def test_promo_body_is_escaped_and_split_into_paragraphs() -> None:
    body = f"First line\nsecond line\n\n{SCRIPT}"
    rendered = render_email("promo", "en", context_for("promo", "en", body=body))

    assert "First line<br>second line</p>" in rendered.html
    assert "&lt;script&gt;" in rendered.html and SCRIPT not in rendered.html
    assert "First line\nsecond line\n\n" + SCRIPT in rendered.text


def test_digest_project_name_is_escaped() -> None:
    context = digest_context("en", project_name=SCRIPT)
    rendered = render_email("daily_digest", "en", context)

    assert SCRIPT not in rendered.html and "&lt;script&gt;" in rendered.html


def test_non_web_links_are_dropped() -> None:
    context = context_for("recovery", "en", checkout_url="javascript:alert(1)")
    rendered = render_email("recovery", "en", context)

    assert "javascript:" not in rendered.html
    assert "Visit Acme Store to complete your purchase." in rendered.text


def test_missing_context_is_an_error() -> None:
    with pytest.raises(RenderError, match="unsubscribe_url"):
        render_email("promo", "en", {"project_name": "Acme"})
    with pytest.raises(RenderError, match="unknown e-mail kind"):
        render_email("newsletter", "en", {"project_name": "Acme"})


def test_subject_is_one_line_even_when_the_project_name_is_not() -> None:
    context = context_for("onboarding", "en", project_name="Acme\r\nBcc: victim@example.com")
    rendered = render_email("onboarding", "en", context)

    assert rendered.subject == "Welcome to Acme Bcc: victim@example.com"


# --- digest numbers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "previous", "locale", "expected"),
    [
        (123, 100, "en", "+23%"),
        (80, 100, "en", "-20%"),
        (100, 100, "en", "0%"),
        (5, 0, "en", "new"),
        (0, 0, "en", "—"),
        (None, 0.5, "en", "—"),
        (0, 4, "en", "-100%"),
        (-50, -100, "en", "+50%"),
        (123, 100, "fr", f"+23{NNBSP}%"),
        (5, 0, "fr", "nouveau"),
        (80, 100, "de", f"-20{NBSP}%"),
        (5, 0, "de", "neu"),
        (5, 0, "es", "nuevo"),
        (80, 100, "ar", f"{LRM}-20%"),
        (5, 0, "ar", "جديد"),
        (2_500, 100, "en", "+2,400%"),
    ],
)
def test_format_change(
    current: float | None, previous: float | None, locale: str, expected: str
) -> None:
    assert format_change(current, previous, locale) == expected


@pytest.mark.parametrize(
    ("cents", "currency", "locale", "expected"),
    [
        (1234, "USD", "en", "$12.34"),
        (1234, "EUR", "fr", f"12,34{NBSP}€"),
        (1234, "EUR", "de", f"12,34{NBSP}€"),
        (1234, "EUR", "es", f"12,34{NBSP}€"),
        (123_456_789, "EUR", "de", f"1.234.567,89{NBSP}€"),
        (123_456, "EUR", "es", f"1234,56{NBSP}€"),  # Spanish groups from five digits
        (1_234_567, "EUR", "es", f"12.345,67{NBSP}€"),
        (123_456_789, "EUR", "fr", f"1{NNBSP}234{NNBSP}567,89{NBSP}€"),
        (1234, "JPY", "en", "¥1,234"),
        (1234, "KWD", "en", f"KWD{NBSP}1.234"),
        (-500, "USD", "en", "-$5.00"),
        (1234, "CHF", "en", f"CHF{NBSP}12.34"),
        (1234, "usd", "fr", f"12,34{NBSP}$US"),
        (1234, "EGP", "ar", f"12.34{NBSP}ج.م."),
        (-1234, "EUR", "ar", f"{LRM}-12.34{NBSP}€"),
    ],
)
def test_format_money(cents: int, currency: str, locale: str, expected: str) -> None:
    assert format_money(cents, currency, locale) == expected


def test_format_percent_rounds_half_up_and_drops_the_sign_of_zero() -> None:
    assert format_percent(2.5, "en") == "3%"
    assert format_percent(0.4, "en", signed=True) == "0%"
    assert format_percent(5.25, "de", decimals=1) == f"5,3{NBSP}%"


def test_digest_rows_show_new_and_signed_changes() -> None:
    context = digest_context("en")
    rows = {row.column: row for row in context["kpi_rows"]}

    assert rows["revenue_cents"].value == "€123.00"
    assert rows["revenue_cents"].change_week == "+23%"
    assert rows["revenue_cents"].tone_week == "good"
    assert rows["orders"].change_week == "-20%" and rows["orders"].tone_week == "bad"
    assert rows["recovered_revenue_cents"].change_day == "new"
    assert rows["recovered_revenue_cents"].change_week == "new"
    assert rows["conversion_rate"].value == "5.0%"
    assert context["col_week_before"] == "vs. last Tuesday"

    rendered = render_email("daily_digest", "en", context)
    assert ">new</td>" in rendered.html and ">-20%</td>" in rendered.html
    assert "new%" not in rendered.html and "inf" not in rendered.html
    assert "Recovered revenue: €15.00 (vs. day before new, vs. last Tuesday new)" in rendered.text


def test_missing_days_count_as_zero_and_a_null_rate_as_no_value() -> None:
    only_today = {TUESDAY: {"orders": 3, "sessions": 0, "conversion_rate": None}}
    context = digest_context("en", daily_kpis=only_today)
    rows = {row.column: row for row in context["kpi_rows"]}

    assert rows["orders"].change_day == "new"
    assert rows["revenue_cents"].value == "€0.00" and rows["revenue_cents"].change_day == "—"
    assert rows["conversion_rate"].value == "—"


def test_chart_has_fourteen_table_bars_and_no_remote_images() -> None:
    context = digest_context("en")
    rendered = render_email("daily_digest", "en", context)
    chart = context["chart"]

    assert rendered.html.count('class="bar"') == CHART_DAYS == len(chart.bars)
    assert [bar.day for bar in chart.bars] == [
        TUESDAY - timedelta(days=offset) for offset in range(CHART_DAYS - 1, -1, -1)
    ]
    assert max(bar.height_px for bar in chart.bars) == CHART_HEIGHT_PX
    assert chart.bars[-1].is_reported_day
    assert "<img" not in rendered.html and 'src="http' not in rendered.html
    assert "<script" not in rendered.html and "url(" not in rendered.html
    assert chart.title == "Revenue, last 14 days"
    assert len(chart.text_lines) == CHART_DAYS
    assert chart.text_lines[-1].startswith("Mar 3") and chart.text_lines[-1].endswith("€123.00")


def test_chart_of_an_empty_fortnight_draws_no_bars() -> None:
    context = digest_context("en", daily_kpis={})
    rendered = render_email("daily_digest", "en", context)

    assert all(bar.height_px == 0 for bar in context["chart"].bars)
    assert rendered.html.count('class="bar"') == CHART_DAYS


@pytest.mark.parametrize(
    ("locale", "expected"),
    [
        (
            "en",
            [
                "Revenue up 23% on last Tuesday",
                "Orders down 20% on last Tuesday",
                "3 checkouts abandoned in the last 24 hours — recovery is off",
            ],
        ),
        (
            "fr",
            [
                f"Chiffre d'affaires en hausse de 23{NNBSP}% par rapport à mardi dernier",
                f"Commandes en baisse de 20{NNBSP}% par rapport à mardi dernier",
                "3 paniers abandonnés au cours des 24 dernières heures — la relance est désactivée",
            ],
        ),
        (
            "es",
            [
                f"Aumento del 23{NBSP}% en los ingresos respecto al martes pasado",
                f"Caída del 20{NBSP}% en los pedidos respecto al martes pasado",
                "3 carritos abandonados en las últimas 24 horas — la recuperación está desactivada",
            ],
        ),
        (
            "de",
            [
                f"Umsatz gegenüber letztem Dienstag um 23{NBSP}% gestiegen",
                f"Bestellungen gegenüber letztem Dienstag um 20{NBSP}% gesunken",
                f"3 abgebrochene Checkouts in den letzten 24 Stunden {EN_DASH} "
                "die Rückgewinnung ist deaktiviert",
            ],
        ),
        (
            "ar",
            [
                "ارتفاع الإيرادات بنسبة 23% مقارنةً بيوم الثلاثاء الماضي",
                "انخفاض عدد الطلبات بنسبة 20% مقارنةً بيوم الثلاثاء الماضي",
                "3 سلال تسوق متروكة خلال آخر 24 ساعة — الاسترداد التلقائي متوقف",
            ],
        ),
    ],
)
def test_insights_are_localized(locale: str, expected: list[str]) -> None:
    kpis = daily_kpis()
    lines = digest_insights(
        locale,
        kpis[TUESDAY],
        kpis[TUESDAY - timedelta(days=1)],
        kpis[TUESDAY - timedelta(days=7)],
        abandoned_24h=3,
        recovery_enabled=False,
        reported_day=TUESDAY,
    )
    assert lines == expected
    rendered = render_email("daily_digest", locale, digest_context(locale))
    assert all(line in rendered.text for line in expected)


def test_insight_rules() -> None:
    today = {"revenue_cents": 5_000, "orders": 6, "sessions": 100, "leads": 2}
    day_before = {"revenue_cents": 5_000, "orders": 3, "sessions": 100, "leads": 1}
    week_before = {"revenue_cents": 0, "orders": 6, "sessions": 95, "leads": 4}

    lines = digest_insights("en", today, day_before, week_before, 1, True)

    assert lines == [
        "Revenue up from zero on the same day last week",
        "Orders up 100% on the day before",  # a week earlier was flat, the day before was not
        "1 checkout abandoned in the last 24 hours — recovery e-mails are on",
    ]  # sessions moved 5% (too little); leads are below the count floor


def test_quiet_day_and_arabic_plurals() -> None:
    assert digest_insights("en", {}, {}, {}, 0, False) == ["No sessions, orders or leads that day"]
    ar = [digest_insights("ar", {}, {}, {}, n, False)[-1] for n in (1, 2, 3, 11, 100)]
    assert ar[0].startswith("سلة تسوق واحدة متروكة")
    assert ar[1].startswith("سلتا تسوق متروكتان")
    assert ar[2].startswith("3 سلال تسوق متروكة")
    assert ar[3].startswith("11 سلة تسوق متروكة")
    assert ar[4].startswith("100 سلة تسوق متروكة")
    assert digest_insights("fr", {}, {}, {}, 1, False)[-1].startswith("1 panier abandonné ")


def test_digest_subject_and_dates_per_locale() -> None:
    subjects = {
        locale: render_email("daily_digest", locale, digest_context(locale)).subject
        for locale in SUPPORTED_LOCALES
    }
    assert subjects["en"] == "Daily summary for Acme Store — Tuesday, March 3, 2026"
    assert subjects["fr"] == "Résumé quotidien de Acme Store — mardi 3 mars 2026"
    assert subjects["es"] == "Resumen diario de Acme Store — martes, 3 de marzo de 2026"
    assert subjects["de"] == f"Tagesübersicht für Acme Store {EN_DASH} Dienstag, 3. März 2026"
    assert subjects["ar"] == "الملخص اليومي لـ Acme Store — الثلاثاء، 3 مارس 2026"
    assert load_catalog("fr").long_date(date(2026, 3, 1)) == "dimanche 1er mars 2026"


def test_digest_has_no_unsubscribe_link_but_marketing_mail_does() -> None:
    digest = render_email("daily_digest", "en", digest_context("en"))
    promo = render_email("promo", "en", context_for("promo", "en"))

    assert "unsubscribe" not in digest.html.lower()
    assert "Unsubscribe: https://app.runhub.example/unsubscribe" in promo.text


def test_unknown_alert_counts_are_rejected() -> None:
    with pytest.raises(RenderError, match="unknown alert counts"):
        digest_context("en", alert_counts={"refunds": 1})


# --- message catalogs -----------------------------------------------------------------------


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and not set(node) <= {"zero", "one", "two", "few", "many", "other"}:
        flat: dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): node}


def _catalog(locale: str) -> dict[str, Any]:
    source = resources.files("runhub_pipeline.sends").joinpath(
        "templates", "messages", f"{locale}.json"
    )
    return _flatten(json.loads(source.read_text(encoding="utf-8")))


def _placeholders(value: Any) -> set[str]:
    texts = value.values() if isinstance(value, dict) else [value]
    names = set()
    for text in texts:
        if isinstance(text, str):
            names |= {name for _, name, _, _ in string.Formatter().parse(text) if name}
    return names - {"count"}  # Arabic "one"/"two" spell the number out


@pytest.mark.parametrize("locale", [locale for locale in SUPPORTED_LOCALES if locale != "en"])
def test_catalogs_match_english(locale: str) -> None:
    english, other = _catalog("en"), _catalog(locale)

    assert set(other) == set(english)
    for key, value in other.items():
        assert _placeholders(value) == _placeholders(english[key]), key
        if isinstance(value, dict):
            assert set(value) == PLURAL_CATEGORIES[locale], key
        if isinstance(value, list):
            assert len(value) == len(english[key]), key


def test_a_digest_context_renders_only_in_its_own_locale() -> None:
    with pytest.raises(RenderError, match="built for 'fr'"):
        render_email("daily_digest", "de", digest_context("fr"))
    assert render_email("daily_digest", "fr-CA", digest_context("fr")).subject.startswith("Résumé")


def test_garbage_optional_values_fall_back_to_defaults() -> None:
    context = context_for("promo", "en", title={"x": 1}, body="   ", cta_label=None, cta_url=42)
    rendered = render_email("promo", "en", context)

    assert rendered.subject == "A special offer from Acme Store"
    assert "We have a special offer for you." in rendered.text
    with pytest.raises(RenderError, match="non-empty project_name"):
        render_email("onboarding", "en", context_for("onboarding", "en", project_name=None))
