"""The figures, their medians and targets: the printed table and the JSON file."""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 2**30
MIB = 2**20


@dataclass(frozen=True)
class Figure:
    section: str
    name: str
    samples: list[float]
    unit: str
    target: str
    passes: Callable[[float], bool] | None
    note: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def verdict(self) -> str:
        if self.passes is None:
            return ""
        return "ok" if self.passes(self.median) else "MISSED"


def fmt(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:,.3f} s" if value < 10 else f"{value:,.1f} s"
    if unit == "x":
        return f"{value:,.2f}x"
    if unit == "%":
        return f"{value:,.0f} %" if value >= 10 else f"{value:.2g} %"
    if unit == "MiB":
        return f"{value:,.0f} MiB"
    if unit == "rows/s":
        return f"{value:,.0f} rows/s"
    return f"{value:,.0f} {unit}".strip()


def table(figures: Sequence[Figure], repeat: int) -> str:
    rows = [("", "figure", f"median of {repeat}", "target", "", "samples / note")]
    for figure in figures:
        samples = ", ".join(fmt(sample, figure.unit) for sample in figure.samples)
        rows.append(
            (
                figure.section,
                figure.name,
                fmt(figure.median, figure.unit),
                figure.target,
                figure.verdict(),
                f"{samples}{'; ' + figure.note if figure.note else ''}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[i].ljust(widths[i]) for i in range(5)]
        cells[2] = row[2].rjust(widths[2])
        lines.append("  ".join([*cells, row[5]]).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths) + "  " + "-" * 14)
    return "\n".join(lines)


def write_json(path: Path, header: dict[str, Any], figures: Sequence[Figure], raw: Any) -> None:
    document = {
        **header,
        "figures": [
            {
                "section": figure.section,
                "figure": figure.name,
                "median": figure.median,
                "unit": figure.unit,
                "samples": figure.samples,
                "target": figure.target,
                "verdict": figure.verdict() or None,
                "note": figure.note or None,
            }
            for figure in figures
        ],
        "raw": raw,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
