"""The pieces both HTML reports are made of (the sweep's, report.py, and the serving run's, serving_report.py)."""
from __future__ import annotations

import html
import os
from pathlib import Path

CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}.oom{background:#fde2e1}.error{background:#fbe3c6}
.unsupported{background:#eee;color:#777}.warn{background:#fff4ce;border:1px solid #e0c36a;\
padding:8px 12px;margin:10px 0}
.small{font-size:12px;color:#555}pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px}
.table-scroll{max-width:100%;overflow-x:auto}code{overflow-wrap:anywhere}@media (max-width:600px){body{margin:10px}}"""
# plotly.js redraws a figure at its container's width when the window changes (a phone turned sideways)
FIGURE_CONFIG = {"displaylogo": False, "responsive": True}


def html_page(title: str, body: str, plotly_src: str | None = None) -> str:
    """A whole page: the shared CSS, a viewport for phones (without it a phone lays the page out 980 px wide and
    shrinks it) and plotly's script, inline (self-contained: the default) or, with ``plotly_src``, read from that
    relative address (``shared_plotly_js``)."""
    if plotly_src is None:
        from plotly.offline import get_plotlyjs
        script = f"<script>{get_plotlyjs()}</script>"
    else:
        script = f'<script src="{html.escape(plotly_src)}"></script>'
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style>{script}</head><body>{body}</body></html>")


def shared_plotly_js(js_path: str | Path, page_path: str | Path) -> str:
    """Writes plotly's script (4.6 MB) to ``js_path`` unless that file already holds this plotly's version, and
    returns its address relative to the page at ``page_path``: reports committed side by side share one copy
    instead of carrying one each."""
    from plotly.offline import get_plotlyjs

    from .results import atomic_write
    js_path, text = Path(js_path), get_plotlyjs()
    if not js_path.is_file() or js_path.read_text(encoding="utf-8") != text:
        js_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(js_path, text)
    return Path(os.path.relpath(js_path.resolve(), Path(page_path).resolve().parent)).as_posix()


def fmt_cell(v, col: str = "") -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if col == "harness_overhead":
            return f"{v * 100:+.1f}%"
        if col in ("perplexity", "perplexity_zh", "accuracy"):   # variants differ in the 3rd-4th digit
            return f"{v:.3f}" if col == "accuracy" else f"{v:.2f}"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return html.escape(str(v))


def html_table(header: list[str], body: list[list[str]], classes: list[str] | None = None, left=()) -> str:
    th = "".join(f'<th class="{"l" if i in left else ""}">{html.escape(h)}</th>' for i, h in enumerate(header))
    trs = []
    for k, row in enumerate(body):
        cls = f' class="{classes[k]}"' if classes and classes[k] else ""
        tds = "".join(f'<td class="{"l" if i in left else ""}">{c}</td>' for i, c in enumerate(row))
        trs.append(f"<tr{cls}>{tds}</tr>")
    # a wide table scrolls sideways in its own box (on a phone it made the whole page 3,500 px wide)
    return f"<div class=\"table-scroll\"><table><tr>{th}</tr>{''.join(trs)}</table></div>"


def figure_html(fig) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config=FIGURE_CONFIG) if fig else ""
