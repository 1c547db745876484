"""The report rendered: Markdown (figures as files beside it) and one self-contained HTML page
(figures inlined), both pure text; write_report is the only function that writes."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from bnlab._atomic import atomic_write
from bnlab.analysis.document import Badge, Block, Code, Figure, Items, Report, Table, Text
from bnlab.errors import RecordsError

FIGURES_DIR = "report-figures"  # beside report.md: the Markdown file's images (the HTML inlines its own)


def _md_text(text: str) -> str:
    """Markdown viewers render raw HTML: escape tags outside `code spans` (which show them literally)."""
    parts = re.split(r"(`[^`]+`)", text)
    return "".join(part if part.startswith("`") else part.replace("<", "&lt;").replace(">", "&gt;")
                   for part in parts)


def _md_badge(badge: Badge) -> str:
    return f"**{badge.outcome}**" + (f" ({badge.detail})" if badge.detail else "")


def _md_cell(value: str | Badge) -> str:
    text = _md_badge(value) if isinstance(value, Badge) else _md_text(value)
    return text.replace("|", "\\|").replace("\n", " ") or " "


def _md_fence(text: str) -> str:
    """A code fence longer than any run of backticks inside, so no text can close it early."""
    return "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))


def render_markdown(report: Report) -> str:
    out = [f"# {_md_text(report.title)}", ""]
    out += [f"> **Warning:** {_md_text(warning)}\n" for warning in report.warnings]
    for section in report.sections:
        out += [f"## {_md_text(section.title)}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                prefix = {"p": "", "note": "> ", "warning": "> **Note:** ", "disagree": "> **Disagrees with the "
                          "literature.** "}[block.kind]
                out += [prefix + _md_text(block.text), ""]
            elif isinstance(block, Badge):
                out += [f"Verdict: {_md_badge(block)}", ""]
            elif isinstance(block, Table):
                out += [f"**{_md_text(block.title)}**", ""] if block.title else []
                out += ["| " + " | ".join(_md_cell(c) for c in block.columns) + " |",
                        "|" + "---|" * len(block.columns)]
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows] + [""]
            elif isinstance(block, Figure):
                out += [f"![{_md_text(block.title)}]({FIGURES_DIR}/{block.slug}.png)", "",
                        f"*{_md_text(block.caption)}*" if block.caption else "", ""]
            elif isinstance(block, Code):
                out += [_md_fence(block.text), block.text, _md_fence(block.text), ""]
            elif isinstance(block, Items):
                out += [f"**{_md_text(block.title)}**", ""] if block.title else []
                out += [f"- {_md_text(item)}" for item in block.items] + [""]
            else:
                raise TypeError(f"report block: unknown {type(block).__name__}")
    return "\n".join(out).rstrip() + "\n"


def _html_text(text: str) -> str:
    escaped = html.escape(text)
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)  # backticks survive escaping; tags cannot


def _badge_html(badge: Badge) -> str:
    kind = re.sub(r"[^a-z]+", "-", badge.outcome.lower())
    detail = f' <span class="detail">{html.escape(badge.detail)}</span>' if badge.detail else ""
    return f'<span class="badge {kind}">{html.escape(badge.outcome)}</span>{detail}'


_NUMERIC = re.compile(r"^([–+-]?[\d.]+(e[+-]?\d+)?[%x]?|\[.*\]|<0\.001|–|n=1: no CI|n<2: no CI|no result)$")


_NUM = ' class="num"'


def _numeric_columns(table: Table) -> list[bool]:
    if not table.align_numbers:
        return [False] * len(table.columns)
    return [all(isinstance(row[i], str) and _NUMERIC.match(row[i]) for row in table.rows) and any(
        isinstance(row[i], str) and re.search(r"\d", row[i]) for row in table.rows) for i in range(len(table.columns))]


def _html_cell(value: str | Badge, numeric: bool) -> str:
    if isinstance(value, Badge):
        return f"<td>{_badge_html(value)}</td>"
    kind = _NUM if numeric else ' class="long"' if len(value) > 40 else ""  # long text wraps, short never
    return f"<td{kind}>{_html_text(value)}</td>"


def _html_block(block: Block) -> str:
    if isinstance(block, Text):
        cls = "" if block.kind == "p" else f' class="callout {block.kind}"'
        return f"<p{cls}>{_html_text(block.text)}</p>"
    if isinstance(block, Badge):
        return f'<p class="verdict">Verdict: {_badge_html(block)}</p>'
    if isinstance(block, Table):
        title = f"<h4>{html.escape(block.title)}</h4>" if block.title else ""
        numeric = _numeric_columns(block)
        head = "".join(f"<th{_NUM if num else ''}>{html.escape(c)}</th>"
                       for c, num in zip(block.columns, numeric, strict=True))
        body = "".join("<tr>" + "".join(_html_cell(c, num) for c, num in zip(row, numeric, strict=True)) + "</tr>"
                       for row in block.rows)
        head_row = f"<thead><tr>{head}</tr></thead>" if any(block.columns) else ""
        return f'{title}<div class="table-wrap"><table>{head_row}<tbody>{body}</tbody></table></div>'
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        caption = f"<figcaption>{html.escape(block.caption)}</figcaption>" if block.caption else ""
        return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.title)}">'
                f"{caption}</figure>")
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    if isinstance(block, Items):
        title = f"<h4>{html.escape(block.title)}</h4>" if block.title else ""
        return title + "<ul>" + "".join(f"<li>{_html_text(item)}</li>" for item in block.items) + "</ul>"
    raise TypeError(f"report block: unknown {type(block).__name__}")


_CSS = """
:root{--fg:#1f2937;--muted:#6b7280;--line:#e5e7eb;--soft:#f9fafb}
*{box-sizing:border-box}
body{margin:0;background:#f3f4f6;color:var(--fg);font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,"Noto Sans","Liberation Sans",sans-serif;-webkit-font-smoothing:antialiased}
main{max-width:1160px;margin:24px auto;background:#fff;padding:28px 40px 40px;border-radius:10px;
box-shadow:0 1px 3px rgba(0,0,0,.08)}
h1{font-size:26px;margin:0 0 2px;letter-spacing:-.01em}
.source{color:var(--muted);margin:0 0 16px;word-break:break-all}
h2{font-size:20px;margin:34px 0 10px;padding-bottom:6px;border-bottom:1px solid var(--line)}
h4{font-size:14px;margin:18px 0 4px;color:#374151}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:12.5px}
code{background:#f3f4f6;padding:1px 4px;border-radius:4px}
pre{background:var(--soft);border:1px solid var(--line);border-radius:6px;padding:10px 12px;white-space:pre-wrap;
word-break:break-all}
pre code{background:none;padding:0}
.table-wrap{overflow-x:auto;margin:6px 0 14px}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums}
th,td{padding:4px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
th{background:var(--soft);font-weight:600;white-space:nowrap;border-bottom:2px solid #d1d5db}
tbody tr:nth-child(even){background:#fbfbfc}
td{white-space:nowrap}
td.long{white-space:normal;word-break:break-word;min-width:16em}
td.num,th.num{text-align:right}
.badge{display:inline-block;padding:1px 10px;border-radius:999px;font-size:12.5px;font-weight:600;border:1px solid}
.badge.supported{background:#dcfce7;color:#166534;border-color:#86efac}
.badge.not-supported{background:#f3f4f6;color:#374151;border-color:#d1d5db}
.badge.inconclusive{background:#fef3c7;color:#92400e;border-color:#fcd34d}
.badge.depends{background:#ede9fe;color:#5b21b6;border-color:#c4b5fd}
.detail{color:var(--muted);font-size:12px}
.verdict{font-size:16px;margin:6px 0}
.callout{border-left:4px solid;padding:9px 14px;border-radius:6px;margin:10px 0}
.callout.note{background:#eff6ff;border-color:#60a5fa}
.callout.warning{background:#fffbeb;border-color:#f59e0b}
.callout.disagree{background:#fef2f2;border-color:#ef4444;font-weight:600}
figure{margin:10px 0 22px}
figure img{max-width:100%;height:auto;border:1px solid var(--line);border-radius:6px}
figcaption{color:var(--muted);font-size:13px;margin-top:4px}
nav{display:flex;flex-wrap:wrap;gap:2px 16px;background:var(--soft);border:1px solid var(--line);
border-radius:8px;padding:8px 16px;margin:14px 0;font-size:13.5px}
nav a{color:#1d4ed8;text-decoration:none;white-space:nowrap}
section.claim{border:1px solid var(--line);border-radius:8px;padding:0 18px 8px;margin:18px 0}
section.claim h2{border:0}
"""


def render_html(report: Report) -> str:
    """One self-contained page: inline CSS, images as data URIs, no script, nothing from the network."""
    toc = "".join(f'<a href="#{s.anchor}">{html.escape(s.title)}</a>' for s in report.sections)
    parts = [f"<h1>{html.escape(report.title)}</h1>", f'<p class="source">{html.escape(report.source)}</p>']
    parts += [f'<p class="callout warning"><strong>Warning:</strong> {_html_text(w)}</p>' for w in report.warnings]
    parts.append(f"<nav>{toc}</nav>")
    for section in report.sections:
        cls = ' class="claim"' if section.title.startswith("Claim: ") else ""
        body = "".join(_html_block(block) for block in section.blocks)
        parts.append(f'<section id="{section.anchor}"{cls}><h2>{html.escape(section.title)}</h2>{body}</section>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head>"
            f"<body><main>{''.join(parts)}</main></body></html>\n")


def write_report(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write report.md (its figures under report-figures/) and the self-contained report.html."""
    md_path, html_path = out_dir / "report.md", out_dir / "report.html"
    try:
        for figure in report.figures:
            atomic_write(out_dir / FIGURES_DIR / f"{figure.slug}.png", figure.png)
        atomic_write(md_path, render_markdown(report).encode())
        atomic_write(html_path, render_html(report).encode())
    except OSError as err:
        raise RecordsError(f"{out_dir}: cannot write the report: {err.strerror or err}") from None
    return md_path, html_path
