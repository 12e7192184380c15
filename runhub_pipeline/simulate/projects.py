"""Projects: personas (time zone, locale, currency), size, owner, digests already sent, and the
addresses of their customers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

from runhub_pipeline.simulate.clock import DAY, QUARTER, from_us, iso, to_us
from runhub_pipeline.simulate.spec import SimulationSpec, project_id


@dataclass(frozen=True)
class _Persona:
    timezone: str
    locale: str
    currency: str
    name: str
    digest_hour: int = 8


# Assigned round-robin, so any run with five or more projects has the awkward zones: +05:45,
# -03:30 with DST, DST in Europe and America, and a digest hour inside New York's DST gap.
_PERSONAS = (
    _Persona("UTC", "en", "USD", "Northwind Goods"),
    _Persona("Asia/Kathmandu", "ne-NP", "USD", "Himalayan Tea House"),
    _Persona("America/New_York", "en-US", "USD", "Brooklyn Bike Co", digest_hour=2),
    _Persona("Europe/Berlin", "de", "EUR", "Kaffeerösterei Müller"),
    _Persona("America/St_Johns", "en-CA", "USD", "Signal Hill Outfitters"),
    _Persona("Asia/Kolkata", "en-IN", "USD", "Chai & Co"),
    _Persona("Africa/Cairo", "ar-EG", "USD", "متجر النيل"),
    _Persona("America/Toronto", "fr-CA", "CAD", "Boulangerie Saint-Laurent"),
    _Persona("America/Sao_Paulo", "pt-BR", "BRL", "Loja Ipanema"),
    _Persona("Europe/Vienna", "de-AT", "EUR", "Wiener Werkstatt", digest_hour=7),
    _Persona("Europe/Madrid", "es", "EUR", "Tienda Sol"),
    _Persona("America/Mexico_City", "es-MX", "USD", "Mercado Azul", digest_hour=9),
    _Persona("Australia/Sydney", "en-AU", "USD", "Bondi Surf Supply"),
    _Persona("Europe/Paris", "fr", "EUR", "Atelier Lumière"),
    _Persona("Asia/Tokyo", "ja-JP", "USD", "Kyoto Ceramics"),
    _Persona("Pacific/Chatham", "en-NZ", "USD", "Chatham Island Wool"),
    _Persona("Europe/London", "en_GB", "GBP", "Camden Record Shop", digest_hour=18),
    _Persona("America/Los_Angeles", "EN-us", "USD", "Venice Skate Lab"),
)
# p0001..p0008 always have events, an owner and digests: small runs cover those zones and ar-EG.
_GUARANTEED = 8


_FIRST = (
    "anna", "ben", "carla", "dmitri", "elif", "farah", "gustavo", "hana", "ivan", "jana",
    "kofi", "lucia", "mehmet", "nadia", "omar", "priya", "quentin", "rosa", "sven", "tariq",
    "uma", "vera", "wei", "yusuf", "zoe", "amir", "beatriz", "chloe", "diego", "emma",
)  # fmt: skip
_LAST = (
    "smith", "garcia", "muller", "rossi", "nguyen", "khan", "silva", "dubois", "kowalski",
    "haddad", "tanaka", "sharma", "oconnor", "schmidt", "fernandez", "novak",
)  # fmt: skip
_DOMAINS = (
    "gmail.com", "yahoo.fr", "web.de", "outlook.com", "hotmail.es", "icloud.com", "proton.me",
    "gmx.at", "uol.com.br", "example.org",
)  # fmt: skip


_SIZE_ALPHA = 1.3  # Pareto shape of project volume: a few projects hold most of the events
_SIZE_CAP = 25.0


@dataclass(frozen=True)
class Profile:
    number: int
    persona: _Persona
    name: str
    size: float
    owner_email: str | None
    digest_enabled: bool
    auto_recover: bool
    stripe_connected: bool
    tracking_installed: bool
    forms_count: int
    created_us: int
    active_start_us: int
    active_end_us: int
    digests: tuple[tuple[date, int], ...]
    """(reported local day, send time) of each digest already sent."""
    digest_next_us: int | None

    @property
    def project_id(self) -> str:
        return project_id(self.number)


def draw_profile(spec: SimulationSpec, number: int, start_us: int, end_us: int) -> Profile:
    """A project's attributes, from their own stream so they do not depend on the events drawn."""
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, number, 0]))
    persona = _PERSONAS[(number - 1) % len(_PERSONAS)]
    cycle = (number - 1) // len(_PERSONAS)
    size = min(_SIZE_CAP, float(rng.pareto(_SIZE_ALPHA) + 1) / 2 ** (1 / _SIZE_ALPHA))
    guaranteed = number <= _GUARANTEED
    # Some projects are created inside the simulated range; some went quiet (churned) so the
    # empty-state metric has something to find.
    is_new = not guaranteed and rng.random() < 0.1
    is_dormant = not guaranteed and rng.random() < 0.08
    created_us = start_us - int(rng.uniform(5, 700) * DAY)
    if is_new:
        created_us = start_us + int(rng.uniform(0, 0.8) * (end_us - start_us))
    active_end_us = end_us - int(rng.uniform(8, 30) * DAY) if is_dormant else end_us
    owner: str | None = f"{_FIRST[number % len(_FIRST)]}.owner{number}@"
    owner = f"{owner}{_DOMAINS[number % len(_DOMAINS)]}"
    if not guaranteed and rng.random() < 0.05:
        owner = None
    elif rng.random() < 0.1:
        owner = f"  {owner.capitalize()} "
    digest_enabled = guaranteed or bool(rng.random() < 0.85)
    digests: list[tuple[date, int]] = []
    digest_next_us = None
    if digest_enabled and owner is not None:
        digests, digest_next_us = _digest_schedule(persona, max(start_us, created_us), end_us - DAY)
    return Profile(
        number=number,
        persona=persona,
        name=persona.name if cycle == 0 else f"{persona.name} {cycle + 1}",
        size=size,
        owner_email=owner,
        digest_enabled=digest_enabled,
        auto_recover=number % 2 == 1 or bool(rng.random() < 0.3),
        stripe_connected=bool(rng.random() < 0.9),
        tracking_installed=bool(rng.random() < 0.9),
        forms_count=int(rng.integers(0, 5)),
        created_us=created_us,
        active_start_us=max(start_us, created_us - created_us % QUARTER),
        active_end_us=active_end_us,
        digests=tuple(digests),
        digest_next_us=digest_next_us,
    )


def _digest_schedule(
    persona: _Persona, first_us: int, until_us: int
) -> tuple[list[tuple[date, int]], int]:
    """Digests sent at the local digest hour from `first_us` to `until_us`, and the next one due.

    The next one falls in the last simulated day, so a sensor run at `end` has one to send. In a
    DST gap the hour does not exist; zoneinfo's fold=0 reading lands on the next existing time.
    """
    tz = ZoneInfo(persona.timezone)
    day = from_us(first_us).astimezone(tz).date()
    sent: list[tuple[date, int]] = []
    while True:
        local = datetime(day.year, day.month, day.day, persona.digest_hour, tzinfo=tz)
        at = to_us(local.astimezone(UTC))
        if at >= until_us:
            return sent, at
        if at >= first_us:
            sent.append((day - timedelta(days=1), at))
        day += timedelta(days=1)


def projects_frame(profiles: list[Profile]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "project_id": [p.project_id for p in profiles],
            "name": [p.name for p in profiles],
            "timezone": [p.persona.timezone for p in profiles],
            "currency": [p.persona.currency for p in profiles],
            "locale": [p.persona.locale for p in profiles],
            "owner_email": [p.owner_email for p in profiles],
            "digest_enabled": [p.digest_enabled for p in profiles],
            "digest_hour": [p.persona.digest_hour for p in profiles],
            "digest_next_at": [iso(p.digest_next_us) for p in profiles],
            "auto_recover_abandoned": [p.auto_recover for p in profiles],
            "stripe_connected": [p.stripe_connected for p in profiles],
            "tracking_installed": [p.tracking_installed for p in profiles],
            "forms_count": [p.forms_count for p in profiles],
            "created_at": [iso(p.created_us) for p in profiles],
        },
        schema_overrides={"owner_email": pl.Utf8, "digest_next_at": pl.Utf8},
    )


def customer_emails(n: int, salt: int) -> pl.Series:
    """One distinct lower-case address per visitor index."""
    index = np.arange(n, dtype=np.int64)
    frame = pl.DataFrame(
        {
            "first": pl.Series(_FIRST).gather(index % len(_FIRST)),
            "last": pl.Series(_LAST).gather((index // len(_FIRST)) % len(_LAST)),
            "number": index // (len(_FIRST) * len(_LAST)),
            "domain": pl.Series(_DOMAINS).gather((index * 7 + salt) % len(_DOMAINS)),
        }
    )
    number = (
        pl.when(pl.col("number") > 0).then(pl.col("number").cast(pl.Utf8)).otherwise(pl.lit(""))
    )
    return frame.select(
        pl.concat_str("first", pl.lit("."), "last", number, pl.lit("@"), "domain")
    ).to_series()
