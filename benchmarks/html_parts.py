"""The pieces both HTML reports are made of (the sweep's, report.py, and the serving run's, serving_report.py)."""
from __future__ import annotations

import html

CSS = """body{font-family:system-ui,sans-serif;margin:24px;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:8px 0 20px;font-size:13px}th,td{border:1px solid #ccc;padding:3px 7px;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}.oom{background:#fde2e1}.error{background:#fbe3c6}
.unsupported{background:#eee;color:#777}.warn{background:#fff4ce;border:1px solid #e0c36a;\
padding:8px 12px;margin:10px 0}
.small{font-size:12px;color:#555}pre{background:#f7f7f7;padding:10px;overflow:auto;font-size:12px}
.table-scroll{max-width:100%;overflow-x:auto}code{overflow-wrap:anywhere}@media (max-width:600px){body{margin:10px}}"""
# plotly.js redraws a figure at its container's width when the window changes (a phone turned sideways)
FIGURE_CONFIG = {"displaylogo": False, "responsive": True}


def html_page(title: str, body: str) -> str:
    """A whole self-contained page: plotly's script inline, the shared CSS, and a viewport for phones (without it
    a phone lays the page out 980 px wide and shrinks it)."""
    from plotly.offline import get_plotlyjs
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style><script>{get_plotlyjs()}</script></head><body>{body}</body></html>")


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
