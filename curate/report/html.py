"""A self-contained HTML page (plots inlined as PNG data URIs) and its markdown twin.

A :class:`Page` collects sections of headings, paragraphs, tables and figures; ``html()`` renders one file
with no external assets (it opens from disk, from CI artefacts or in a mail), ``markdown()`` the same text
and tables with the plots written as PNG files beside it. matplotlib is only needed for figures: without it
the figures are left out and the page says so.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curate.core.errors import ConfigError

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.t,th.t{text-align:left}figure{display:inline-block;margin:.4em}
figcaption{font-size:.85em;color:#555;text-align:center}pre{white-space:pre-wrap;background:#f7f7f7;padding:.5em;
font-size:.85em;max-height:12em;overflow:auto}.note{color:#666;font-size:.9em}
"""

#: marks a page as curate's own, so a later report replaces it and never a user's file of the same name
_GENERATOR_HTML = "<meta name='generator' content='curate report'>"
_GENERATOR_MD = "<!-- generator: curate report -->"

# the page records how many of its images decoded, so a headless browser's DOM dump proves the plots render
_ONLOAD = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.setAttribute('data-images-total', imgs.length);
  document.body.setAttribute('data-images-rendered', ok);
});
"""


@dataclass
class Figure:
    png: bytes
    caption: str
    name: str


@dataclass
class Section:
    title: str
    anchor: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)


class Page:
    def __init__(self, title: str):
        self.title = title
        self.sections: list[Section] = []
        self._figures = 0

    def section(self, title: str, anchor: str) -> Section:
        s = Section(title, anchor)
        self.sections.append(s)
        return s

    @staticmethod
    def text(sec: Section, s: str) -> None:
        sec.blocks.append(("p", s))

    @staticmethod
    def note(sec: Section, s: str) -> None:
        sec.blocks.append(("note", s))

    @staticmethod
    def code(sec: Section, s: str) -> None:
        sec.blocks.append(("pre", s))

    @staticmethod
    def table(sec: Section, header: list[str], rows: list[list[Any]]) -> None:
        sec.blocks.append(("table", (header, rows)))

    def figure(self, sec: Section, fig: Any, caption: str) -> None:
        """Add a matplotlib figure (closed after rendering)."""
        import matplotlib.pyplot as plt

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        self._figures += 1
        sec.blocks.append(("fig", Figure(buf.getvalue(), caption, f"fig-{self._figures:02d}.png")))

    # -- rendering ---------------------------------------------------------------------------------
    def html(self) -> str:
        e = html.escape
        out = [f"<!doctype html><html><head><meta charset='utf-8'>{_GENERATOR_HTML}<title>{e(self.title)}</title>",
               f"<style>{_CSS}</style><script>{_ONLOAD}</script></head><body>", f"<h1>{e(self.title)}</h1>",
               "<nav>" + " · ".join(f"<a href='#{s.anchor}'>{e(s.title)}</a>" for s in self.sections) + "</nav>"]
        for s in self.sections:
            out.append(f"<section id='{s.anchor}'><h2>{e(s.title)}</h2>")
            for kind, v in s.blocks:
                if kind == "p":
                    out.append(f"<p>{e(v)}</p>")
                elif kind == "note":
                    out.append(f"<p class='note'>{e(v)}</p>")
                elif kind == "pre":
                    out.append(f"<pre>{e(v)}</pre>")
                elif kind == "table":
                    header, rows = v
                    out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>")
                    for r in rows:  # text left, numbers right
                        out.append("<tr>" + "".join(
                            f"<td{'' if isinstance(c, (int, float)) and not isinstance(c, bool) else chr(32) + 'class=t'}>"
                            f"{e(_fmt(c))}</td>" for c in r) + "</tr>")
                    out.append("</table>")
                elif kind == "fig":
                    data = base64.b64encode(v.png).decode()
                    out.append(f"<figure><img alt='{e(v.caption)}' src='data:image/png;base64,{data}'>"
                               f"<figcaption>{e(v.caption)}</figcaption></figure>")
            out.append("</section>")
        out.append("</body></html>")
        return "\n".join(out)

    def markdown(self, fig_dir: Path | None = None) -> str:
        lines = [_GENERATOR_MD, f"# {self.title}", ""]
        for s in self.sections:
            lines += [f"## {s.title}", ""]
            for kind, v in s.blocks:
                if kind in ("p", "note"):
                    lines += [v, ""]
                elif kind == "pre":
                    lines += ["```", v, "```", ""]
                elif kind == "table":
                    header, rows = v
                    lines.append("| " + " | ".join(map(str, header)) + " |")
                    lines.append("|" + "---|" * len(header))
                    lines += ["| " + " | ".join(_fmt(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |"
                              for r in rows]
                    lines.append("")
                elif kind == "fig" and fig_dir is not None:
                    fig_dir.mkdir(parents=True, exist_ok=True)
                    (fig_dir / v.name).write_bytes(v.png)
                    lines += [f"![{v.caption}]({fig_dir.name}/{v.name})", ""]
        return "\n".join(lines)

    def write(self, out_dir: str | Path, stem: str = "report") -> tuple[Path, Path]:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        ph, pm = out / f"{stem}.html", out / f"{stem}.md"
        for f, mark in ((ph, _GENERATOR_HTML), (pm, _GENERATOR_MD)):  # never replace a file curate did not write
            if f.exists() and mark not in f.read_text(encoding="utf-8", errors="replace")[:2000]:
                raise ConfigError(f"'{f}' exists and was not written by curate report; choose another --out")
        ph.write_text(self.html(), encoding="utf-8")
        pm.write_text(self.markdown(out / f"{stem}_figures"), encoding="utf-8")
        return ph, pm


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:  # nan
            return "-"
        return f"{v:,.0f}" if abs(v) >= 1e4 else f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "-" if v is None else str(v)


def have_matplotlib() -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        return True
    except ImportError:
        return False
