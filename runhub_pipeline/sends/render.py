"""Rendering of Run Hub e-mail: subject, HTML and plain-text parts, in every supported locale.

One HTML and one text template per kind (`templates/<kind>.html|txt`; promo and update share
`announcement`) take their wording from the locale's message catalog. HTML is rendered with
autoescaping, so values from the app database or event payloads (a product called
`<script>…`) stay text; the text part is rendered without escaping because it is never parsed as
HTML. Both environments use `StrictUndefined`: a missing context value fails the render instead
of sending an e-mail with a hole in it.

The daily digest takes its context from `digest_context.build_digest_context`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from jinja2 import Environment, PackageLoader, StrictUndefined

from runhub_pipeline.sends.locales import Catalog, is_rtl, load_catalog, normalize_locale

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
