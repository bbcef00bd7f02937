"""Plotly figures of a results dict (used by the HTML report and, live, by the Benchmark tab).

Every figure names models with ``model_label`` so random-weight rows read "[random weights]" everywhere, and
draws random-weight models with hollow markers/hatched bars.
"""
from __future__ import annotations

import csv
import textwrap
from pathlib import Path

from .results import median, model_label

REF_CSV = Path(__file__).parent / "references" / "optimum_benchmark_mistral7b_a100.csv"
VARIANT_ORDER = ["fp32", "bf16", "fp16", "int8", "int8-wo", "nf4", "fp4", "gptq", "awq"]
# subplot titles: short, and broken into lines that fit half a phone's width (two panels side by side)
BAR_METRICS = [("decode_tok_s", "decode tok/s<br>(higher is better)"), ("ttft_ms", "time to first<br>token, ms"),
               ("itl_p50_ms", "inter-token<br>latency p50, ms"), ("e2e_long_s", "long answer<br>(256 tokens), s"),
               ("MEM", "peak memory, GB"), ("weights_gb", "weights in<br>memory, GB"),
               ("load_read_s", "load time<br>(from_pretrained), s"), ("e2e_short_s", "short answer<br>(32 tokens), s")]
DETAIL_CHARS = 48                      # a line of a title's detail (its subtitle), on a 390 px phone
LEGEND_CHARS = 36                      # a line of a legend entry (its symbol beside it)
SUBTITLE_FONT = dict(size=12)


def phone_safe_layout(fig, title: str, detail: str = "", **layout) -> None:
    """A title and legend that stay clear of the plot and of each other from a phone's 390 px up: a short title
    (one line on a phone) at the top left, its detail as the title's subtitle in smaller lines (wrapped, never
    cut at the figure's edge), the top margin grown to fit both (``automargin``); the legend in rows under the
    plot; subplot titles in a smaller font. Anchored at the container's top: a multi-line title anchored at the
    plot's top ran into the plot in Gradio's plotly.js (3.3) and was fine in the report's (4.1)."""
    above_subplot_titles = 40 if fig.layout.annotations else 10     # two lines of 12 px subplot titles
    fig.update_layout(
        title=dict(text=title, subtitle=dict(text="<br>".join(textwrap.wrap(detail, DETAIL_CHARS)),
                                             font=SUBTITLE_FONT),
                   x=0, xref="container", xanchor="left", y=1, yref="container", yanchor="top", automargin=True,
                   pad=dict(l=12, t=8, b=above_subplot_titles)),
        legend=dict(orientation="h", x=0, xanchor="left", y=0, yref="container", yanchor="bottom"),
        margin=dict(l=50, r=16, t=30, b=30, autoexpand=True), **layout)
    fig.update_annotations(font=SUBTITLE_FONT)
    for trace in fig.data:       # a legend entry does not wrap by itself: a long one ran off a phone's screen
        if trace.name and len(trace.name) > LEGEND_CHARS and "<br>" not in trace.name:
            trace.name = "<br>".join(textwrap.wrap(trace.name, LEGEND_CHARS))


def ok_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok"]


def mem_metric(rows: list[dict]) -> tuple[str, str]:
    """The memory column that matters here: GPU allocator peak when there are GPU rows, else process RSS."""
    if any(r.get("peak_gpu_mem_gb") is not None for r in rows):
        return "peak_gpu_mem_gb", "peak GPU memory (allocator), GB"
    return "peak_rss_gb", "peak process RSS, GB"


def base_setting(rows: list[dict]) -> tuple[int, int, int] | None:
    """The (batch, prompt, new) the per-variant bars show: the smallest batch, the most common lengths."""
    ok = ok_rows(rows) or rows
    if not ok:
        return None
    bs = min(r["batch_size"] for r in ok)
    at_bs = [r for r in ok if r["batch_size"] == bs]
    pairs = [(r["prompt_tokens"], r["new_tokens"]) for r in at_bs]
    p, n = max(set(pairs), key=lambda x: (pairs.count(x), -x[0]))
    return bs, p, n


def variant_rank(v: str) -> tuple[int, str]:
    base = v[:-len("+fast")] if v.endswith("+fast") else v
    return (VARIANT_ORDER.index(base) if base in VARIANT_ORDER else 99, v)


def _order(variants) -> list[str]:
    return sorted(set(variants), key=variant_rank)


def _models(rows):
    return list(dict.fromkeys(model_label(r) for r in rows))


def bars_figure(rows: list[dict]):
    """Grouped bars: one panel per metric, x = variant, one bar colour per model."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    setting = base_setting(rows)
    if setting is None:
        return None
    bs, p, n = setting
    sel = [r for r in ok_rows(rows) if (r["batch_size"], r["prompt_tokens"], r["new_tokens"]) == setting]
    if not sel:
        return None
    mem_key, mem_title = mem_metric(sel)
    mem_title = mem_title.replace(" (allocator)", "<br>(allocator)")    # half a phone's width
    metrics = [(mem_key, mem_title) if k == "MEM" else (k, t) for k, t in BAR_METRICS]
    fig = make_subplots(rows=4, cols=2, subplot_titles=[t for _, t in metrics], vertical_spacing=0.08)
    order = _order(r["variant"] for r in sel)
    for mi, model in enumerate(_models(sel)):
        mrows = {r["variant"]: r for r in sel if model_label(r) == model}
        random = any(r.get("random_weights") for r in mrows.values())
        for k, (key, _) in enumerate(metrics):
            xs = [v for v in order if v in mrows and mrows[v].get(key) is not None]
            ys = [mrows[v][key] for v in xs]
            err = None
            raw_key = {"decode_tok_s": "decode_tok_s", "ttft_ms": "ttft_ms"}.get(key)
            if raw_key:
                lists = [mrows[v].get("raw", {}).get(raw_key) or [y] for v, y in zip(xs, ys)]
                err = dict(type="data", symmetric=False, array=[max(lst) - y for lst, y in zip(lists, ys)],
                           arrayminus=[y - min(lst) for lst, y in zip(lists, ys)], thickness=1)
            fig.add_trace(go.Bar(x=xs, y=ys, name=model, legendgroup=model, showlegend=k == 0, error_y=err,
                                 marker=dict(color=_color(mi), pattern_shape="/" if random else ""),
                                 hovertemplate="%{x}: %{y:.4g}<extra>" + model + "</extra>"),
                          row=k // 2 + 1, col=k % 2 + 1)
    phone_safe_layout(fig, "Per variant", f"batch {bs}, prompt {p}, new {n}; median of repeats, whiskers min–max",
                      barmode="group", height=1300)
    return fig


def _color(i: int) -> str:
    palette = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]
    return palette[i % len(palette)]


def scatter_figure(rows: list[dict]):
    """Memory vs throughput, one point per (model, variant) at the base setting."""
    import plotly.graph_objects as go
    setting = base_setting(rows)
    sel = [r for r in ok_rows(rows) if setting and (r["batch_size"], r["prompt_tokens"], r["new_tokens"]) == setting]
    if not sel:
        return None
    mem_key, mem_title = mem_metric(sel)
    fig = go.Figure()
    for mi, model in enumerate(_models(sel)):
        pts = [r for r in sel if model_label(r) == model and r.get(mem_key) is not None]
        random = any(r.get("random_weights") for r in pts)
        fig.add_trace(go.Scatter(
            x=[r[mem_key] for r in pts], y=[r["decode_tok_s"] for r in pts], text=[r["variant"] for r in pts],
            mode="markers+text", textposition="top center", name=model,
            marker=dict(size=13, color=_color(mi), symbol="circle-open" if random else "circle",
                        line=dict(width=2))))
    phone_safe_layout(fig, "Memory vs decode throughput", "up and left is better", xaxis_title=mem_title,
                      yaxis_title="decode tok/s", height=480)
    return fig


def sweep_figure(rows: list[dict], axis: str):
    """Lines over batch size / prompt length / new tokens, when the run swept that axis."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    ok = ok_rows(rows)
    if len({r[axis] for r in ok}) < 2:
        return None
    ys = {"batch_size": [("decode_tok_s", "decode tok/s<br>(all sequences)"), ("ttft_ms", "TTFT ms")],
          "prompt_tokens": [("ttft_ms", "TTFT ms"), ("decode_tok_s", "decode tok/s")],
          "new_tokens": [("e2e_s", "end-to-end s"), ("decode_tok_s", "decode tok/s")]}[axis]
    others = [a for a in ("batch_size", "prompt_tokens", "new_tokens") if a != axis]
    fixed = {a: median([r[a] for r in ok]) for a in others}
    fixed = {a: min({r[a] for r in ok}, key=lambda v: abs(v - fixed[a])) for a in others}
    sel = [r for r in ok if all(r[a] == fixed[a] for a in others)]
    fig = make_subplots(rows=1, cols=2, subplot_titles=[t for _, t in ys])
    for i, key in enumerate(sorted({(model_label(r), r["variant"]) for r in sel})):
        pts = sorted((r for r in sel if (model_label(r), r["variant"]) == key), key=lambda r: r[axis])
        for c, (m, _) in enumerate(ys):
            fig.add_trace(go.Scatter(x=[r[axis] for r in pts], y=[r[m] for r in pts], mode="lines+markers",
                                     name=f"{key[0]} [{key[1]}]", legendgroup=str(key), showlegend=c == 0,
                                     line=dict(color=_color(i))), row=1, col=c + 1)
    fig.update_xaxes(title_text=axis.replace("_", " "), type="log" if axis == "batch_size" else "linear")
    fixed_txt = ", ".join(f"{a.replace('_', ' ')} {v}" for a, v in fixed.items())
    phone_safe_layout(fig, f"Sweep over {axis.replace('_', ' ')}", fixed_txt, height=460)
    return fig


def load_reference() -> list[dict]:
    lines = [ln for ln in REF_CSV.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return list(csv.DictReader(lines))


def reference_ratios(rows: list[dict]) -> tuple[list[dict], str | None]:
    """Ratios to fp16 of the published table beside this run's own ratios (same variants, batch 1 only).
    Uses this run's bf16 as the baseline when it has no fp16 row, and says so; says too where this run's
    setting or metric differs from the published one's (the returned note, None when nothing differs)."""
    ref = [r for r in load_reference() if r["batch_size"] == "1"]
    ref_base = next(r for r in ref if r["variant"] == "fp16")
    setting = base_setting(rows)
    ok = [r for r in ok_rows(rows) if setting and (r["batch_size"], r["prompt_tokens"], r["new_tokens"]) == setting]
    mem_key, _ = mem_metric(ok) if ok else ("peak_rss_gb", "")
    out, notes = [], []
    ref_setting = (1, int(ref_base["prompt_tokens"]), int(ref_base["new_tokens"]))
    if setting and setting != ref_setting:
        notes.append(f"this run's ratios are at batch {setting[0]}, prompt {setting[1]}, {setting[2]} new tokens; "
                     f"the published ones at batch 1, prompt {ref_setting[1]}, {ref_setting[2]} new tokens")
    if ok:
        notes.append("published tok/s is generate throughput (prefill included), this run's is decode tok/s; "
                     f"published memory is the process-wide peak, this run's is {mem_key}")
    for model in _models(ok):
        mine = {r["variant"]: r for r in ok if model_label(r) == model}
        base_v = "fp16" if "fp16" in mine else ("bf16" if "bf16" in mine else None)
        if base_v is None:
            continue
        if base_v == "bf16" and "no fp16" not in " ".join(notes):
            notes.insert(0, "this run has no fp16 row for some models: their ratios are to bf16")
        base = mine[base_v]
        for r in ref:
            mr = mine.get(r["variant"])
            out.append({
                "model": model, "variant": r["variant"], "reference": r["reference_variant"],
                "ref_tok_s_ratio": float(r["generate_tok_s"]) / float(ref_base["generate_tok_s"]),
                "ref_mem_ratio": float(r["generate_peak_mb"]) / float(ref_base["generate_peak_mb"]),
                "run_tok_s_ratio": (mr["decode_tok_s"] / base["decode_tok_s"]) if mr and base["decode_tok_s"] else None,
                "run_mem_ratio": ((mr[mem_key] / base[mem_key]) if mr and mr.get(mem_key) and base.get(mem_key)
                                  else None),
                "baseline": base_v})
    return out, ("; ".join(notes) if out and notes else None)


def reference_figure(rows: list[dict]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    ratios, _ = reference_ratios(rows)
    if not ratios:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=["decode throughput<br>÷ fp16", "peak memory<br>÷ fp16"])
    ref = {r["variant"]: r for r in ratios}
    xs = [v for v in _order(ref)]
    for c, (rk, mk) in enumerate((("ref_tok_s_ratio", "run_tok_s_ratio"), ("ref_mem_ratio", "run_mem_ratio"))):
        fig.add_trace(go.Bar(x=xs, y=[ref[v][rk] for v in xs], name="optimum-benchmark, Mistral-7B, A100",
                             marker_color="#BBBBBB", showlegend=c == 0, legendgroup="ref"), row=1, col=c + 1)
        for i, model in enumerate(dict.fromkeys(r["model"] for r in ratios)):
            mine = {r["variant"]: r for r in ratios if r["model"] == model}
            fig.add_trace(go.Bar(x=xs, y=[mine[v][mk] if v in mine else None for v in xs],
                                 name=f"this run: {model} (÷ {next(iter(mine.values()))['baseline']})",
                                 marker_color=_color(i), showlegend=c == 0, legendgroup=model), row=1, col=c + 1)
    fig.add_hline(y=1.0, line_dash="dot", line_color="#888")
    phone_safe_layout(fig, "Against the published table", "ratios to fp16, batch 1", barmode="group", height=460)
    return fig


QUALITY_METRICS = [("perplexity", "perplexity<br>English ↓"), ("perplexity_zh", "perplexity<br>Chinese ↓"),
                   ("accuracy", "ARC-Easy<br>accuracy ↑")]


def quality_rows(rows: list[dict]) -> list[dict]:
    """One row per (model, variant) that has a quality number (they repeat over a variant's rows)."""
    out: dict[tuple, dict] = {}
    for r in rows:
        if any(r.get(k) is not None for k, _ in QUALITY_METRICS):
            out.setdefault((model_label(r), r["variant"]), r)
    return sorted(out.values(), key=lambda r: (_models(rows).index(model_label(r)), variant_rank(r["variant"])))


def quality_figure(rows: list[dict]):
    """Quality vs weight memory: perplexity (en, zh) and accuracy against weights_gb, one point per variant."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots
    sel = [r for r in quality_rows(rows) if r.get("weights_gb") is not None]
    if not sel:
        return None
    fig = make_subplots(rows=1, cols=3, subplot_titles=[t for _, t in QUALITY_METRICS], horizontal_spacing=0.07)
    for mi, model in enumerate(_models(sel)):
        pts = [r for r in sel if model_label(r) == model]
        for c, (key, _) in enumerate(QUALITY_METRICS):
            p = [r for r in pts if r.get(key) is not None]
            fig.add_trace(go.Scatter(
                x=[r["weights_gb"] for r in p], y=[r[key] for r in p], text=[r["variant"] for r in p],
                mode="markers+text", textposition="top center", name=model, legendgroup=model,
                showlegend=c == 0, marker=dict(size=11, color=_color(mi)),
                hovertemplate="%{text}: %{y:.4g} at %{x:.3f} GB<extra>" + model + "</extra>"), row=1, col=c + 1)
    fig.update_xaxes(title_text="weights in memory, GB", row=1, col=2)   # once: three ran into each other on a phone
    phone_safe_layout(fig, "Quality vs memory", "one point per variant; ↓ lower is better, ↑ higher is better; "
                      "perplexity compares variants of one model only (the tokenizers differ)", height=500)
    return fig
