"""Locales of outgoing e-mail: normalization (CONTRACT §6), message catalogs and number formats.

Translated strings live in `templates/messages/<locale>.json`, one catalog per locale, so that
one HTML and one text template per e-mail kind serve every language. Number, money and date
formats follow CLDR closely enough for e-mail (grouping, decimal mark, symbol position) without
depending on Babel.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from typing import Any, Literal

SUPPORTED_LOCALES: tuple[str, ...] = ("en", "ar", "fr", "es", "de")
DEFAULT_LOCALE = "en"
RTL_LOCALES: frozenset[str] = frozenset({"ar"})

PluralCategory = Literal["zero", "one", "two", "few", "many", "other"]

# Arabic text puts a sign on the wrong side of a number unless a strong left-to-right mark
# precedes it (Unicode bidi rule W7); CLDR's Arabic number symbols carry the same mark.
_LRM = "\u200e"
_NBSP = "\u00a0"
_NNBSP = "\u202f"


def normalize_locale(tag: str | None) -> str:
    """The supported locale for an app locale tag such as `ar-EG`, per CONTRACT §6.

    Lower-case, keep the part before the first `-` or `_`, and fall back to `en` for anything
    unsupported or missing. Surrounding blanks are trimmed first, as staging trims every text
    (CONTRACT §4), so `" ar-EG"` and `"ar-EG"` agree.
    """
    if tag is None:
        return DEFAULT_LOCALE
    primary = tag.strip().lower().replace("_", "-").split("-", 1)[0]
    return primary if primary in SUPPORTED_LOCALES else DEFAULT_LOCALE


def is_rtl(locale: str | None) -> bool:
    """Whether the (normalized) locale is written right to left."""
    return normalize_locale(locale) in RTL_LOCALES


def text_direction(locale: str | None) -> Literal["rtl", "ltr"]:
    return "rtl" if is_rtl(locale) else "ltr"


def plural_category(locale: str, count: int) -> PluralCategory:
    """The CLDR plural category of an integer count (cardinal rules, integers only)."""
    n = abs(count)
    if locale == "ar":
        if n == 0:
            return "zero"
        if n == 1:
            return "one"
        if n == 2:
            return "two"
        if 3 <= n % 100 <= 10:
            return "few"
        if 11 <= n % 100 <= 99:
            return "many"
        return "other"
    if locale == "fr":
        return "one" if n in (0, 1) else "other"
    return "one" if n == 1 else "other"


PLURAL_CATEGORIES: dict[str, frozenset[str]] = {
    "en": frozenset({"one", "other"}),
    "fr": frozenset({"one", "other"}),
    "es": frozenset({"one", "other"}),
    "de": frozenset({"one", "other"}),
    "ar": frozenset({"zero", "one", "two", "few", "many", "other"}),
}


@dataclass(frozen=True)
class NumberStyle:
    """How a locale writes numbers (Latin digits everywhere, as Run Hub's UI does)."""

    group: str
    decimal: str
    percent: str  # pattern around the number, e.g. "{}%" or "{} %"
    currency_after: bool
    # CLDR minimumGroupingDigits: Spanish writes 1234 but 12.345.
    min_grouping: int = 1
    sign_prefix: str = ""


NUMBER_STYLES: dict[str, NumberStyle] = {
    "en": NumberStyle(group=",", decimal=".", percent="{}%", currency_after=False),
    "fr": NumberStyle(group=_NNBSP, decimal=",", percent="{}" + _NNBSP + "%", currency_after=True),
    "de": NumberStyle(group=".", decimal=",", percent="{}" + _NBSP + "%", currency_after=True),
    "es": NumberStyle(
        group=".", decimal=",", percent="{}" + _NBSP + "%", currency_after=True, min_grouping=2
    ),
    "ar": NumberStyle(group=",", decimal=".", percent="{}%", currency_after=True, sign_prefix=_LRM),
}

# ISO 4217 minor units where they are not 2; amounts are stored in minor units ("cents").
_CURRENCY_DIGITS: dict[str, int] = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0, "PYG": 0,
    "RWF": 0, "UGX": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0, "XPF": 0,
    "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
}  # fmt: skip

_CURRENCY_SYMBOLS: dict[str, str] = {
    "USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "INR": "₹", "KRW": "₩", "ILS": "₪",
    "NGN": "₦", "BRL": "R$", "CAD": "CA$", "AUD": "A$", "MXN": "MX$", "CNY": "CN¥",
}  # fmt: skip

# Where a locale's readers would misread the shared symbol ("$" is not the dollar in Mexico).
_LOCALE_SYMBOLS: dict[str, dict[str, str]] = {
    "fr": {"USD": "$US", "CAD": "$CA", "AUD": "$AU"},
    "es": {"USD": "US$"},
    "ar": {"USD": "US$", "EGP": "ج.م.", "SAR": "ر.س.", "AED": "د.إ."},
}


def _round(value: Decimal, decimals: int) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP)


def _digits(magnitude: Decimal, decimals: int, style: NumberStyle) -> str:
    """Format a non-negative, already rounded number with the locale's separators."""
    text = f"{magnitude:.{decimals}f}"
    whole, _, fraction = text.partition(".")
    if len(whole) >= 3 + style.min_grouping:
        groups: list[str] = []
        while len(whole) > 3:
            groups.insert(0, whole[-3:])
            whole = whole[:-3]
        whole = style.group.join([whole, *groups])
    return f"{whole}{style.decimal}{fraction}" if fraction else whole


def _sign(negative: bool, signed: bool, style: NumberStyle) -> str:
    if negative:
        return style.sign_prefix + "-"
    return style.sign_prefix + "+" if signed else ""


def format_number(value: float | int | Decimal, locale: str, *, decimals: int = 0) -> str:
    """`1234.5` → `1,234.5` (en), `1 234,5` (fr), `1.234,5` (de)."""
    style = NUMBER_STYLES[locale]
    rounded = _round(Decimal(str(value)), decimals)
    return _sign(rounded < 0, False, style) + _digits(abs(rounded), decimals, style)


def format_percent(
    percent: float | int, locale: str, *, decimals: int = 0, signed: bool = False
) -> str:
    """A value already in percent units: `23` → `23%` (en), `23 %` (fr); `signed` adds `+`."""
    style = NUMBER_STYLES[locale]
    rounded = _round(Decimal(str(percent)), decimals)
    # A value that rounds to zero gets no sign: "+0%" or "-0%" would claim a direction.
    sign = _sign(rounded < 0, signed and rounded != 0, style)
    return sign + style.percent.format(_digits(abs(rounded), decimals, style))


def currency_digits(currency: str) -> int:
    return _CURRENCY_DIGITS.get(currency.upper(), 2)


def format_money(amount_cents: int, currency: str, locale: str) -> str:
    """Minor units to a display amount: `1234, "USD"` → `$12.34` (en), `12,34 €` (fr, de, es).

    Unknown currencies show their ISO code (`CHF 12.34`, `12,34 CHF`).
    """
    code = currency.strip().upper()
    style = NUMBER_STYLES[locale]
    decimals = currency_digits(code)
    amount = Decimal(int(amount_cents)).scaleb(-decimals)
    digits = _digits(abs(amount), decimals, style)
    sign = _sign(amount < 0, False, style)
    symbol = _LOCALE_SYMBOLS.get(locale, {}).get(code) or _CURRENCY_SYMBOLS.get(code, code)
    if style.currency_after:
        return f"{sign}{digits}{_NBSP}{symbol}"
    # A letter code needs a space before the digits ("CHF 12.34"), a symbol does not ("$12.34").
    gap = _NBSP if symbol[-1].isalpha() else ""
    return f"{sign}{symbol}{gap}{digits}"


class Catalog:
    """The translated strings of one locale, looked up by dotted key (`digest.subject`)."""

    def __init__(self, locale: str, data: dict[str, Any]) -> None:
        self.locale = locale
        self._data = data

    def raw(self, key: str) -> Any:
        node: Any = self._data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"message catalog {self.locale!r} has no key {key!r}")
            node = node[part]
        return node

    def text(self, key: str, count: int | None = None, **params: object) -> str:
        """The string at `key` with `{name}` placeholders filled in.

        A plural entry (a mapping of CLDR categories) needs `count`, which is also available to
        the string as `{count}`, formatted for the locale. Parameters are inserted as plain text;
        HTML escaping is the template's job.
        """
        entry = self.raw(key)
        if isinstance(entry, dict):
            if count is None:
                raise KeyError(f"message {key!r} is a plural entry: pass count=")
            entry = entry.get(plural_category(self.locale, count), entry["other"])
            params = {"count": format_number(count, self.locale), **params}
        if not isinstance(entry, str):
            raise KeyError(f"message {key!r} in {self.locale!r} is not a string")
        return entry.format_map(params)

    def names(self, key: str) -> list[str]:
        """A list entry, such as the weekday or month names."""
        entry = self.raw(key)
        if not isinstance(entry, list):
            raise KeyError(f"message {key!r} in {self.locale!r} is not a list")
        return [str(item) for item in entry]

    def weekday(self, day: date) -> str:
        return self.names("date.weekdays")[day.weekday()]

    def long_date(self, day: date) -> str:
        """`Tuesday, March 3, 2026` (en), `mardi 3 mars 2026` (fr), `3. März` style for de."""
        day_text = self.text("date.first_of_month") if day.day == 1 else str(day.day)
        return self.text(
            "date.long",
            weekday=self.weekday(day),
            day=day_text,
            month=self.names("date.months")[day.month - 1],
            year=day.year,
        )

    def short_date(self, day: date) -> str:
        """`Mar 3` (en), `3 mars` (fr): chart labels."""
        return self.text(
            "date.short", day=day.day, month=self.names("date.months_short")[day.month - 1]
        )


@functools.cache
def load_catalog(locale: str) -> Catalog:
    """The catalog of a supported locale; read once per process, never at import time."""
    if locale not in SUPPORTED_LOCALES:
        raise ValueError(f"unsupported locale {locale!r}; normalize it with normalize_locale()")
    source = resources.files("runhub_pipeline.sends").joinpath(
        "templates", "messages", f"{locale}.json"
    )
    return Catalog(locale, json.loads(source.read_text(encoding="utf-8")))
