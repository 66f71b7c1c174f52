"""A small report writer: sections, tables and PNG figures → ``index.html`` + ``results.md``.

Used by ``resi-dual demo`` and the experiment runners::

    r = Report("ResiDual demo")
    r.section("Zero-shot", "Top-1 on the test split.")
    r.table(df, caption="zero-shot accuracy")
    r.figure("plots/spectra.png", caption="explained variance per head")
    r.write("demo-out")          # demo-out/index.html, demo-out/results.md, demo-out/figures/*.png

The HTML is one self-contained file (inline CSS, no scripts) apart from relative links to the PNGs,
which ``write`` copies under ``figures/`` unless they already live inside the output folder. The
markdown holds the same text and tables, with figures as links.
"""

from __future__ import annotations

import html
import math
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from resi_dual.errors import ResiDualError

_CSS = """
body { font-family: -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; background: #ffffff; margin: 0; line-height: 1.5; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.9em; border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.4em; margin-top: 2em; border-bottom: 1px solid #d0d7de; padding-bottom: .2em; }
p { max-width: 80ch; }
code { background: #f3f4f6; padding: .1em .3em; border-radius: 4px; font-size: .92em; }
nav ol { columns: 2; max-width: 80ch; }
.meta { color: #57606a; font-size: .9em; }
table { border-collapse: collapse; margin: 1em 0 .4em; font-size: .92em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; }
td.num { text-align: right; }
th { background: #f6f8fa; }
tr:nth-child(even) td { background: #fafbfc; }
caption, figcaption { caption-side: bottom; color: #57606a; font-size: .9em; text-align: left; padding-top: 4px; }
figure { margin: 1.2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; border-radius: 4px; }
"""


@dataclass
class _Block:
    kind: str  # "section" | "text" | "table" | "figure"
    payload: Any
    caption: str | None = None


@dataclass
class Report:
    """An ordered list of sections, paragraphs, tables and figures, written as HTML and markdown.

    Attributes:
        title: the page title (``<h1>``).
        subtitle: optional line under the title (e.g. the command that produced the report).
        float_format: format spec for floats in tables.
    """

    title: str
    subtitle: str | None = None
    float_format: str = ".4g"
    blocks: list[_Block] = field(default_factory=list)

    # -- building --------------------------------------------------------------------------------
    def section(self, title: str, text: str | None = None) -> "Report":
        """Start a section (``<h2>``), optionally with a paragraph of text."""
        self.blocks.append(_Block("section", str(title)))
        if text:
            self.text(text)
        return self

    def text(self, text: str) -> "Report":
        """A paragraph (blank lines split paragraphs; `backticks` become code)."""
        self.blocks.append(_Block("text", str(text)))
        return self

    def table(self, data, caption: str | None = None) -> "Report":
        """A table from a pandas DataFrame, a list of dicts, or ``(header, rows)``."""
        header, rows = _tabulate(data)
        self.blocks.append(_Block("table", (header, rows), caption))
        return self

    def figure(self, png_path: str | Path, caption: str | None = None) -> "Report":
        """A PNG figure; the file must exist when :meth:`write` runs."""
        self.blocks.append(_Block("figure", Path(png_path), caption))
        return self

    # -- writing ---------------------------------------------------------------------------------
    def write(self, out_dir: str | Path) -> Path:
        """Write ``index.html``, ``results.md`` (and copy figures to ``figures/``); returns index.html."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        links = self._place_figures(out)
        (out / "results.md").write_text(self._markdown(links), encoding="utf-8")
        index = out / "index.html"
        index.write_text(self._html(links), encoding="utf-8")
        return index

    def _place_figures(self, out: Path) -> dict[int, str]:
        """Block index -> relative link, copying PNGs from outside ``out`` into ``out/figures``."""
        links: dict[int, str] = {}
        used: set[str] = set()
        out_resolved = out.resolve()
        for i, b in enumerate(self.blocks):
            if b.kind != "figure":
                continue
            src: Path = b.payload
            if not src.is_file():
                raise ResiDualError(f"report figure {src} does not exist")
            if src.suffix.lower() != ".png":
                raise ResiDualError(f"report figure {src} is not a PNG")
            src_resolved = src.resolve()
            if out_resolved in src_resolved.parents:
                links[i] = src_resolved.relative_to(out_resolved).as_posix()
                continue
            name, k = src.name, 1
            while name in used:  # two different figures with one file name
                name, k = f"{src.stem}-{k}{src.suffix}", k + 1
            used.add(name)
            (out / "figures").mkdir(exist_ok=True)
            shutil.copyfile(src, out / "figures" / name)
            links[i] = f"figures/{name}"
        return links

    def _fmt(self, v) -> str:
        if v is None:
            return ""
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float) or type(v).__name__ in ("float32", "float64"):
            v = float(v)
            return "–" if math.isnan(v) else format(v, self.float_format)
        return str(v)

    def _html(self, links: dict[int, str]) -> str:
        e = html.escape
        sections = [(i, b.payload) for i, b in enumerate(self.blocks) if b.kind == "section"]
        parts = [
            "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{e(self.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>", "<main>",
            f"<h1>{e(self.title)}</h1>",
        ]
        if self.subtitle:
            parts.append(f"<p>{_inline(self.subtitle)}</p>")
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        parts.append(f'<p class="meta">written {stamp} by resi-dual</p>')
        if len(sections) > 2:
            parts.append("<nav><ol>" + "".join(f'<li><a href="#s{i}">{e(t)}</a></li>' for i, t in sections) + "</ol></nav>")
        for i, b in enumerate(self.blocks):
            if b.kind == "section":
                parts.append(f'<h2 id="s{i}">{e(b.payload)}</h2>')
            elif b.kind == "text":
                parts += [f"<p>{_inline(p)}</p>" for p in _paragraphs(b.payload)]
            elif b.kind == "table":
                header, rows = b.payload
                t = ["<table>"]
                if b.caption:
                    t.append(f"<caption>{_inline(b.caption)}</caption>")
                t.append("<thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr></thead><tbody>")
                for row in rows:
                    cells = []
                    for v in row:
                        cls = ' class="num"' if _is_number(v) else ""
                        cells.append(f"<td{cls}>{e(self._fmt(v))}</td>")
                    t.append("<tr>" + "".join(cells) + "</tr>")
                t.append("</tbody></table>")
                parts.append("".join(t))
            elif b.kind == "figure":
                alt = e(b.caption or Path(links[i]).stem)
                cap = f"<figcaption>{_inline(b.caption)}</figcaption>" if b.caption else ""
                parts.append(f'<figure><img src="{e(links[i])}" alt="{alt}" loading="lazy">{cap}</figure>')
        parts += ["</main>", "</body>", "</html>", ""]
        return "\n".join(parts)

    def _markdown(self, links: dict[int, str]) -> str:
        lines = [f"# {self.title}", ""]
        if self.subtitle:
            lines += [self.subtitle, ""]
        for i, b in enumerate(self.blocks):
            if b.kind == "section":
                lines += [f"## {b.payload}", ""]
            elif b.kind == "text":
                for p in _paragraphs(b.payload):
                    lines += [p, ""]
            elif b.kind == "table":
                header, rows = b.payload
                esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                lines.append("| " + " | ".join(esc(h) for h in header) + " |")
                lines.append("|" + "|".join("---:" if rows and _is_number(rows[0][j]) else "---" for j in range(len(header))) + "|")
                for row in rows:
                    lines.append("| " + " | ".join(esc(self._fmt(v)) for v in row) + " |")
                if b.caption:
                    lines += ["", f"*{b.caption}*"]
                lines.append("")
            elif b.kind == "figure":
                lines += [f"![{b.caption or Path(links[i]).stem}]({links[i]})", ""]
                if b.caption:
                    lines += [f"*{b.caption}*", ""]
        return "\n".join(lines)


# -- helpers --------------------------------------------------------------------------------------

def _tabulate(data) -> tuple[list[str], list[list]]:
    """(header, rows) from a DataFrame, a list of dicts or a (header, rows) pair."""
    if hasattr(data, "columns") and hasattr(data, "itertuples"):  # pandas DataFrame
        df = data
        named_index = any(n is not None for n in getattr(df.index, "names", [None]))
        if named_index:
            df = df.reset_index()
        return [str(c) for c in df.columns], [list(r) for r in df.itertuples(index=False, name=None)]
    if isinstance(data, tuple) and len(data) == 2:
        header, rows = data
        return [str(h) for h in header], [list(r) for r in rows]
    if isinstance(data, Sequence) and all(isinstance(r, dict) for r in data):
        header: list[str] = []
        for r in data:
            header += [str(k) for k in r if str(k) not in header]
        return header, [[r.get(h) for h in header] for r in data]
    raise ResiDualError("a report table needs a DataFrame, a list of dicts, or (header, rows)")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or type(v).__name__ in ("float32", "float64", "int64", "int32")


def _paragraphs(text: str) -> list[str]:
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]


_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _inline(text: str) -> str:
    """HTML-escape, then turn `code` spans into <code> and markdown [text](href) into links."""
    parts = str(text).split("`")
    out = "".join(f"<code>{html.escape(p)}</code>" if k % 2 else html.escape(p) for k, p in enumerate(parts))
    return _LINK.sub(lambda m: f'<a href="{m.group(2)}">{m.group(1)}</a>', out)
