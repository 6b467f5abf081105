"""A small document model rendered twice: Markdown (``report.md``, figures linked) and one
self-contained HTML page (``report.html``, PNG figures embedded as base64 ``data:`` URIs, so
the page can be mailed or archived alone).

Both renderings come from the same blocks, so they always hold the same numbers.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union


@dataclass(frozen=True)
class Cell:
    """A table cell or inline text: ``text``, optionally a link (``href`` relative to the
    report's folder) and bold (the best value of a column)."""

    text: str
    href: str | None = None
    bold: bool = False


Inline = Union[str, Cell]
#: a table cell: text, one Cell, or a sequence of them (e.g. several links)
TableCell = Union[str, Cell, list]


@dataclass
class Table:
    header: list[str]
    rows: list[list[TableCell]]
    caption: str = ""
    #: optional note under the table (sources of the numbers); may hold links.
    source: list[Inline] = field(default_factory=list)


@dataclass
class Figure:
    path: Path  # absolute path of the PNG
    caption: str


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    parts: list[Inline]
    css_class: str = ""


@dataclass
class Code:
    text: str


Block = Union[Heading, Paragraph, Table, Figure, Code]


class Document:
    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: list[Block] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(Heading(text, level))

    def paragraph(self, *parts: Inline, css_class: str = "") -> None:
        self.blocks.append(Paragraph(list(parts), css_class))

    def table(self, table: Table) -> None:
        self.blocks.append(table)

    def figure(self, path: str | Path, caption: str) -> None:
        self.blocks.append(Figure(Path(path), caption))

    def code(self, text: str) -> None:
        self.blocks.append(Code(text))


# ------------------------------------------------------------------ Markdown


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_inline(part: TableCell) -> str:
    if isinstance(part, list):
        return "".join(_md_inline(p) for p in part)
    if isinstance(part, str):
        return _md_escape(part)
    text = _md_escape(part.text)
    if part.bold and text:
        text = f"**{text}**"
    return f"[{text}]({part.href})" if part.href else text


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def to_markdown(doc: Document, base: Path) -> str:
    lines = [f"# {doc.title}", ""]
    for block in doc.blocks:
        if isinstance(block, Heading):
            lines += ["#" * max(1, min(6, block.level)) + " " + block.text, ""]
        elif isinstance(block, Paragraph):
            text = "".join(_md_inline(p) for p in block.parts)
            lines += [f"> **{text}**" if block.css_class == "banner" else text, ""]
        elif isinstance(block, Code):
            lines += ["```", block.text, "```", ""]
        elif isinstance(block, Figure):
            lines += [f"![{block.caption}]({_relative(block.path, base)})", "", f"*{block.caption}*", ""]
        elif isinstance(block, Table):
            if block.caption:
                lines += [f"**{block.caption}**", ""]
            lines.append("| " + " | ".join(_md_escape(h) for h in block.header) + " |")
            lines.append("|" + "|".join("---" for _ in block.header) + "|")
            for row in block.rows:
                lines.append("| " + " | ".join(_md_inline(c) for c in row) + " |")
            lines.append("")
            if block.source:
                lines += ["<sub>" + "".join(_md_inline(p) for p in block.source) + "</sub>", ""]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------ HTML

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.5em 0 0.3em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: bold; padding-bottom: 0.3em; }
.source { font-size: 0.8em; color: #555; margin-bottom: 1.2em; }
.banner { background: #fff3cd; border: 2px solid #d39e00; padding: 0.6em 1em;
          font-weight: bold; font-size: 1.1em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; }
pre { background: #f6f8fa; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
"""


def _html_inline(part: TableCell) -> str:
    if isinstance(part, list):
        return "".join(_html_inline(p) for p in part)
    if isinstance(part, str):
        return html.escape(part)
    text = html.escape(part.text)
    if part.bold and text:
        text = f"<b>{text}</b>"
    return f'<a href="{html.escape(part.href, quote=True)}">{text}</a>' if part.href else text


def _png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(doc: Document) -> str:
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(doc.title)}</title>", f"<style>{STYLE}</style></head><body>",
           f"<h1>{html.escape(doc.title)}</h1>"]
    for block in doc.blocks:
        if isinstance(block, Heading):
            level = max(1, min(6, block.level))
            out.append(f"<h{level}>{html.escape(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            css = f' class="{block.css_class}"' if block.css_class else ""
            out.append(f"<p{css}>" + "".join(_html_inline(p) for p in block.parts) + "</p>")
        elif isinstance(block, Code):
            out.append(f"<pre>{html.escape(block.text)}</pre>")
        elif isinstance(block, Figure):
            out.append(f'<figure><img src="{_png_data_uri(block.path)}" alt="{html.escape(block.caption, quote=True)}">'
                       f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
        elif isinstance(block, Table):
            out.append("<table>")
            if block.caption:
                out.append(f"<caption>{html.escape(block.caption)}</caption>")
            out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.header) + "</tr>")
            for row in block.rows:
                out.append("<tr>" + "".join(f"<td>{_html_inline(c)}</td>" for c in row) + "</tr>")
            out.append("</table>")
            if block.source:
                out.append('<div class="source">' + "".join(_html_inline(p) for p in block.source) + "</div>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


__all__ = ["Cell", "Code", "Document", "Figure", "Heading", "Paragraph", "Table", "to_html", "to_markdown"]
