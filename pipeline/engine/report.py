"""Reports a person opens: one self-contained HTML file (plots embedded as PNG data URIs), Markdown and JSON.

Every Gristmill report (run funnel, sweep, tokenizer comparison) is built from the same few blocks, so they look alike
and one validator (`check_html`) proves in tests that each plot is really there.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from gristmill.pipeline.engine.ownership import claim


class _Pyplot:
    """matplotlib.pyplot with the Agg backend, imported on first use: it costs a second or more, and every
    command line start (`gristmill --help` included) would otherwise pay it."""

    def __getattr__(self, name: str) -> Any:
        import matplotlib

        if "matplotlib.pyplot" not in sys.modules:
            matplotlib.use("Agg")  # headless: reports are written to files, never shown
        import matplotlib.pyplot

        return getattr(matplotlib.pyplot, name)


plt = _Pyplot()

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:0.3em 0.6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.85em;color:#555}.note{color:#555}
"""


def format_cell(value: Any) -> str:
    """Numbers the way a reader wants them: thousands separators for integers, four significant digits otherwise."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:,.0f}" if abs(value) >= 1e5 else f"{value:.4g}"
    return str(value)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]


@dataclass
class Figure:
    png: bytes
    caption: str
    name: str


@dataclass
class Section:
    title: str
    blocks: list[Table | Figure | str] = field(default_factory=list)


def markdown_cell(cell: Any) -> str:
    """A table cell on one line: a pipe would end the cell and a line break the row (text snippets hold both)."""
    return " ".join(format_cell(cell).replace("|", "\\|").splitlines())


class Report:
    """Collects sections of text, tables and matplotlib figures, then writes report.html, report.md and report.json."""

    def __init__(self, title: str, data: dict[str, Any] | None = None):
        self.title = title
        self.data: dict[str, Any] = dict(data or {})
        self.sections: list[Section] = []

    def section(self, title: str) -> Report:
        self.sections.append(Section(title))
        return self

    def _current(self) -> Section:
        if not self.sections:
            self.section(self.title)
        return self.sections[-1]

    def text(self, paragraph: str) -> Report:
        self._current().blocks.append(paragraph)
        return self

    def table(self, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Report:
        """A table from a list of dicts; columns default to the keys of the first row, in order."""
        columns = list(columns or (rows[0].keys() if rows else []))
        self._current().blocks.append(Table(columns, [[row.get(column) for column in columns] for row in rows]))
        return self

    def figure(self, figure: plt.Figure, caption: str) -> Report:
        """Embeds a matplotlib figure as PNG and closes it."""
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        index = sum(isinstance(block, Figure) for section in self.sections for block in section.blocks) + 1
        slug = re.sub(r"[^a-z0-9]+", "-", caption.lower()).strip("-")[:40] or "figure"
        self._current().blocks.append(Figure(buffer.getvalue(), caption, f"figure-{index:02d}-{slug}.png"))
        return self

    def html(self) -> str:
        parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 f"<style>{STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>"]
        for section in self.sections:
            parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
            for block in section.blocks:
                if isinstance(block, Table):
                    head = "".join(f"<th>{html.escape(column)}</th>" for column in block.columns)
                    body = "".join("<tr>" + "".join(f"<td>{html.escape(format_cell(cell))}</td>" for cell in row)
                                   + "</tr>" for row in block.rows)
                    parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
                elif isinstance(block, Figure):
                    source = "data:image/png;base64," + base64.b64encode(block.png).decode()
                    parts.append(f"<figure><img src='{source}' alt='{html.escape(block.caption)}'>"
                                 f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
                else:
                    parts.append(f"<p>{html.escape(block)}</p>")
            parts.append("</section>")
        parts.append("</body></html>\n")
        return "".join(parts)

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for section in self.sections:
            lines += [f"## {section.title}", ""]
            for block in section.blocks:
                if isinstance(block, Table):
                    lines.append("| " + " | ".join(block.columns) + " |")
                    lines.append("|" + "---|" * len(block.columns))
                    lines += ["| " + " | ".join(markdown_cell(cell) for cell in row) + " |" for row in block.rows]
                elif isinstance(block, Figure):
                    lines.append(f"![{block.caption}](figures/{block.name})")
                else:
                    lines.append(block)
                lines.append("")
        return "\n".join(lines)

    def write(self, directory: str | Path) -> dict[str, Path]:
        """report.html (self-contained), report.md with figures/*.png beside it, report.json; returns the paths."""
        directory = Path(directory)
        claim(directory)
        (directory / "figures").mkdir(parents=True, exist_ok=True)
        names = set()
        for section in self.sections:
            for block in section.blocks:
                if isinstance(block, Figure):
                    (directory / "figures" / block.name).write_bytes(block.png)
                    names.add(block.name)
        for stale in (directory / "figures").glob("figure-*.png"):  # left by an earlier report into this directory
            if stale.name not in names:
                stale.unlink()
        paths = {"html": directory / "report.html", "markdown": directory / "report.md",
                 "json": directory / "report.json"}
        paths["html"].write_text(self.html(), encoding="utf-8")
        paths["markdown"].write_text(self.markdown(), encoding="utf-8")
        paths["json"].write_text(json.dumps({"title": self.title, **self.data}, indent=2, sort_keys=True,
                                            default=str) + "\n", encoding="utf-8")
        return paths


class _ReportParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in ("h1", "h2", "h3"):
            self._in_heading = True
            self.headings.append("")
        if tag == "img":
            self.images.append(values.get("src") or "")
        if tag in ("script", "link") and (values.get("src") or values.get("href")):
            self.external.append(values.get("src") or values.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2", "h3"):
            self._in_heading = False

    def handle_data(self, data: str) -> None:
        if self._in_heading:
            self.headings[-1] += data


def check_html(path: str | Path) -> dict[str, Any]:
    """Validates a report without a browser: it parses, loads nothing from outside, and every image is a real PNG.

    Returns the section headings and each image's pixel size; raises ValueError naming the first problem.
    """
    parser = _ReportParser()
    parser.feed(Path(path).read_text(encoding="utf-8"))
    parser.close()
    if parser.external:
        raise ValueError(f"{path}: loads external resources {parser.external}")
    sizes = []
    for source in parser.images:
        prefix = "data:image/png;base64,"
        if not source.startswith(prefix):
            raise ValueError(f"{path}: image is not an embedded PNG: {source[:60]!r}")
        png = base64.b64decode(source[len(prefix):], validate=True)
        if not png.startswith(PNG_MAGIC):
            raise ValueError(f"{path}: embedded image is not a PNG")
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        if width < 50 or height < 50:
            raise ValueError(f"{path}: embedded image is only {width}x{height} pixels")
        sizes.append((width, height))
    return {"headings": [heading.strip() for heading in parser.headings], "images": sizes}
