"""The report as data: sections of text, tables, figures and code, built by analysis.report and
turned into Markdown and HTML by analysis.render. Every piece of text from configs and runs
stays plain text here; the HTML renderer escapes it in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Text:
    text: str  # plain text; `code spans` in backticks
    kind: str = "p"  # p | note | warning | disagree


@dataclass(frozen=True)
class Badge:
    outcome: str  # supported | not supported | depends | inconclusive (claims.OUTCOMES)
    detail: str = ""


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[list[str | Badge]]
    title: str = ""
    align_numbers: bool = True  # right-align columns of numbers (not in key-value tables)


@dataclass(frozen=True)
class Figure:
    slug: str  # file name stem under report-figures/
    title: str
    png: bytes
    caption: str = ""


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Items:
    items: list[str]
    title: str = ""


Block = Text | Badge | Table | Figure | Code | Items


@dataclass(frozen=True)
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass(frozen=True)
class Report:
    title: str
    source: str
    warnings: list[str]  # shown as boxes above everything else
    sections: list[Section]
    runs: Any  # read_runs' frame
    cells: Any  # one row per cell (per dataset): the numbers behind the per-cell tables

    @property
    def figures(self) -> list[Figure]:
        return [block for section in self.sections for block in section.blocks if isinstance(block, Figure)]
