"""The in-house e-mails already sent (digests, notifications) and the suppression list."""

from __future__ import annotations

from datetime import date
from typing import Any

import numpy as np
import polars as pl

from runhub_pipeline.simulate.clock import DAY, US, iso
from runhub_pipeline.simulate.projects import Profile
from runhub_pipeline.simulate.spec import ID_BLOCK

_DIGEST_SUBJECTS = {
    "en": "Your Run Hub daily digest for {day}",
    "fr": "Votre résumé Run Hub du {day}",
    "es": "Tu resumen diario de Run Hub del {day}",
    "de": "Ihre Run Hub Tageszusammenfassung für {day}",
    "ar": "ملخص Run Hub اليومي ليوم {day}",
}


def _locale_variant(rng: np.random.Generator, locale: str) -> str | None:
    """The locale tag as the app stored it on an e-mail, in the forms seen in the wild."""
    u = rng.random()
    if u < 0.8:
        return locale
    if u < 0.88:
        return locale.replace("-", "_").lower()
    return None if u < 0.94 else "en"


def _subject(locale: str | None, day: date) -> str:
    language = (locale or "en").lower().replace("_", "-").split("-")[0]
    return _DIGEST_SUBJECTS.get(language, _DIGEST_SUBJECTS["en"]).format(day=day.isoformat())


def emails_frame(
    rng: np.random.Generator, profile: Profile, start_us: int, end_us: int
) -> pl.DataFrame:
    """The digests already sent (mostly delivered, some failed, bounced or stuck queued) and a few
    notification e-mails."""
    pid = profile.project_id
    rows: list[dict[str, Any]] = []
    for reported, at in profile.digests:
        created = at + int(rng.integers(0, 120 * US))
        u = rng.random()
        status = (
            "sent" if u < 0.9 else "failed" if u < 0.94 else "bounced" if u < 0.97 else "queued"
        )
        locale = _locale_variant(rng, profile.persona.locale)
        rows.append(
            {
                "project_id": pid,
                "template_name": "daily_digest",
                "locale": locale,
                "to_email": profile.owner_email,
                "subject": _subject(locale, reported),
                "status": status,
                "idempotency_key": f"digest:{pid}:{reported.isoformat()}",
                "created_us": created,
                "sent_us": created + int(rng.integers(US, 30 * US))
                if status in ("sent", "bounced")
                else None,
                "error": _EMAIL_ERRORS.get(status),
            }
        )
    if profile.owner_email is not None:
        first = max(start_us, profile.created_us)
        count = int(rng.poisson((end_us - first) / DAY / 4))
        for index, created in enumerate(sorted(rng.integers(first, end_us, count).tolist())):
            rows.append(
                {
                    "project_id": pid,
                    "template_name": "notification",
                    "locale": profile.persona.locale,
                    "to_email": profile.owner_email,
                    "subject": "New order received",
                    "status": "sent",
                    "idempotency_key": f"notification:{pid}:{index}",
                    "created_us": created,
                    "sent_us": created + US,
                    "error": None,
                }
            )
    rows.sort(key=lambda row: (row["created_us"], row["idempotency_key"]))
    base = profile.number * ID_BLOCK
    return pl.DataFrame(
        [
            {
                "id": base + index,
                **{k: v for k, v in row.items() if not k.endswith("_us")},
                "created_at": iso(row["created_us"]),
                "sent_at": iso(row["sent_us"]),
            }
            for index, row in enumerate(rows, start=1)
        ],
        schema=_EMAIL_SCHEMA,
    )


_EMAIL_ERRORS = {
    "failed": "smtp: 451 temporary failure",
    "bounced": "550 5.1.1 mailbox unavailable",
}
_EMAIL_SCHEMA = {
    "id": pl.Int64,
    "project_id": pl.Utf8,
    "template_name": pl.Utf8,
    "locale": pl.Utf8,
    "to_email": pl.Utf8,
    "subject": pl.Utf8,
    "status": pl.Utf8,
    "idempotency_key": pl.Utf8,
    "error": pl.Utf8,
    "created_at": pl.Utf8,
    "sent_at": pl.Utf8,
}


def suppressions_frame(
    rng: np.random.Generator, profile: Profile, emails: pl.Series, start_us: int, end_us: int
) -> pl.DataFrame:
    count = min(len(emails), 50, max(1, round(len(emails) * 0.01)))  # 0 without customers
    who = np.sort(rng.choice(len(emails), count, replace=False))
    reasons = rng.choice(["unsubscribed", "bounced", "complained"], count, p=[0.6, 0.3, 0.1])
    created = np.sort(rng.integers(start_us, end_us, count))
    return pl.DataFrame(
        {
            "project_id": profile.project_id,
            "email": emails.gather(who),
            "reason": reasons.tolist(),
            "created_at": [iso(int(t)) for t in created],
        },
        schema={"project_id": pl.Utf8, "email": pl.Utf8, "reason": pl.Utf8, "created_at": pl.Utf8},
    )
