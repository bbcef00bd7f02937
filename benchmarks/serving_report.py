"""report.html of a serving benchmark (``python -m benchmarks serve``): latency percentiles and throughput per
concurrency / request-rate level, with plots of both against concurrency. ``report.render`` hands serving
results (``config.kind == "serving"``) to ``render_serving``."""
from __future__ import annotations

import html
import json

from .html_parts import figure_html, fmt_cell, html_page, html_table
from .plots import phone_safe_layout

SERVE_COLS = ["concurrency", "request_rate", "requests", "errors", "req_s", "tok_s", "ttft_ms", "ttft_ms_p90",
              "ttft_ms_p99", "itl_p50_ms", "itl_p90_ms", "itl_p99_ms", "e2e_p50_s", "e2e_p90_s", "e2e_p99_s",
              "decode_tok_s", "prompt_tokens_measured", "output_tokens_mean", "token_count", "duration_s", "error"]
HEADERS = {"request_rate": "rate /s", "req_s": "req/s", "tok_s": "out tok/s", "ttft_ms": "ttft p50 ms",
           "ttft_ms_p90": "ttft p90 ms", "ttft_ms_p99": "ttft p99 ms", "itl_p50_ms": "itl p50 ms",
           "itl_p90_ms": "itl p90 ms", "itl_p99_ms": "itl p99 ms", "e2e_p50_s": "e2e p50 s", "e2e_p90_s": "e2e p90 s",
           "e2e_p99_s": "e2e p99 s", "decode_tok_s": "decode tok/s per request (p50)",
           "prompt_tokens_measured": "prompt tok (server)", "output_tokens_mean": "out tok / request",
           "token_count": "tokens from", "duration_s": "duration s"}


def _figures(rows: list[dict]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Latency vs<br>concurrency", "Throughput vs<br>concurrency"))
    for rate in dict.fromkeys(r.get("request_rate") for r in ok):
        pts = sorted((r for r in ok if r.get("request_rate") == rate), key=lambda r: r["concurrency"])
        tag = "rate inf" if rate is None else f"rate {rate:g}/s"
        x = [r["concurrency"] for r in pts]
        for key, label, dash in (("ttft_ms", "TTFT p50 ms", None), ("ttft_ms_p99", "TTFT p99 ms", "dot"),
                                 ("itl_p50_ms", "ITL p50 ms", "dash")):
            fig.add_trace(go.Scatter(x=x, y=[r.get(key) for r in pts], mode="lines+markers",
                                     name=f"{label} ({tag})", line={"dash": dash}), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=[r.get("tok_s") for r in pts], mode="lines+markers",
                                 name=f"output tok/s ({tag})"), row=1, col=2)
        fig.add_trace(go.Scatter(x=x, y=[r.get("req_s") for r in pts], mode="lines+markers",
                                 name=f"requests/s ({tag})", line={"dash": "dot"}), row=1, col=2)
    fig.update_xaxes(type="log")
    fig.update_xaxes(title_text="concurrency (requests in flight)", row=1, col=1)   # once: two collide on a phone
    fig.update_yaxes(title_text="ms", row=1, col=1)
    phone_safe_layout(fig, "Serving: latency and throughput", "", height=480)
    return fig


def render_serving(data: dict) -> str:
    rows, env, cfg = data["rows"], data.get("environment", {}), data.get("config", {})
    name = cfg.get("run_name") or "serving"
    ep = env.get("endpoint", {})
    warns = []
    failed = sum(r.get("errors") or 0 for r in rows)
    if failed:
        warns.append(f"{failed} request(s) failed; each is listed with its message in results.json "
                     f"(<code>rows[].raw.requests</code>), and the counts are in the <b>errors</b> column.")
    if data.get("cancelled"):
        warns.append("This run was stopped before the end.")
    if not data.get("finished"):
        warns.append("This run is still in progress (or ended abruptly): the report shows the levels so far.")
    served = ", ".join(ep.get("models") or []) or html.escape(str(ep.get("models_error") or "none listed"))
    head = (f"<p><b>{html.escape(str(env.get('date', '')))}</b> · endpoint <b>{html.escape(str(ep.get('url')))}</b>"
            f" (model {html.escape(str(rows[0]['model']) if rows else '–')}; the server lists: {html.escape(served)})"
            f" · prompt {cfg.get('prompt_tokens')} tokens, {cfg.get('new_tokens')} new tokens"
            f"{' (ignore_eos)' if cfg.get('ignore_eos') else ' (the server may stop earlier at end-of-sequence)'}, "
            f"{cfg.get('requests')} requests per level, greedy, seed {cfg.get('seed')}<br>"
            f"client: {html.escape(str(env.get('cpu_model')))} ({env.get('cpu_cores_logical')} threads, load "
            f"average at start {env.get('load_average_at_start')}) · git "
            f"{html.escape(str(env.get('git', {}).get('commit')))[:12]}<br>"
            f"<code>{html.escape(str(env.get('command')))}</code></p>")
    body = [[fmt_cell(r.get(c), c) for c in SERVE_COLS] for r in rows]
    classes = [r["status"] if r["status"] != "ok" else ("error" if r.get("errors") else "") for r in rows]
    parts = [f"<h1>Serving benchmark: {html.escape(name)}</h1>", head,
             *[f'<div class="warn">{w}</div>' for w in warns],
             "<h2>Levels</h2>",
             html_table([HEADERS.get(c, c) for c in SERVE_COLS], body, classes, left=(len(SERVE_COLS) - 1,)),
             '<p class="small">All times are measured by the client: TTFT = request sent → first streamed text '
             "chunk (queueing and network included); ITL = gaps between streamed chunks (pooled over the level's "
             "requests); e2e = request sent → stream end. req/s and out tok/s = successful requests and their "
             "output tokens ÷ the level's wall time. Output tokens are the server's <code>usage</code> count when "
             "it sends one, else streamed chunks (column “tokens from”). Failed requests count in errors, not in "
             "the percentiles.</p>",
             "<h2>Plots</h2>", figure_html(_figures(rows)),
             "<h2>Environment and settings</h2>",
             "<pre>" + html.escape(json.dumps({'environment': env, 'config': cfg,
                                               'prompt_source': data.get('prompt_source')},
                                              indent=1, default=str)) + "</pre>"]
    return html_page(f"Serving benchmark {name}", "".join(parts))
