"""report.html from results.json: one self-contained file (plotly.js inline), readable offline."""
from __future__ import annotations

import html
import json
from pathlib import Path

from . import plots
from .html_parts import figure_html, fmt_cell, html_page, html_table, shared_plotly_js
from .published import guides_html
from .results import COLUMNS, LONG_TOKENS, SHORT_TOKENS, add_peer_ratios, atomic_write, load_results, model_label

FULL_COLS = ["model", "variant", "batch_size", "prompt_tokens", "new_tokens", "status", "kernel", "repeats",
             "ttft_ms", "ttft_ms_p90", "decode_tok_s", "decode_tok_s_p90", "itl_p50_ms", "itl_p90_ms", "e2e_s",
             "e2e_short_s", "e2e_long_s", "peak_rss_gb", "peak_gpu_mem_gb", "peak_gpu_reserved_gb",
             "peak_gpu_nvml_gb", "weights_gb", "load_s", "load_read_s", "load_quantize_s", "convert_s",
             "harness_overhead", "decode_mode", "warmup_s", "read_bandwidth_gb_s", "roofline_tok_s",
             "roofline_fraction", "x_transformers", "error"]


def compact_table(rows: list[dict]) -> str:
    """variant | RAM | VRAM | load | short answer | long answer, per model at the base setting."""
    setting = plots.base_setting(rows)
    if setting is None:
        return "<p>No rows.</p>"
    sel = [r for r in rows if (r["batch_size"], r["prompt_tokens"], r["new_tokens"]) == setting]
    qcols = [c for c in ("perplexity", "perplexity_zh", "accuracy") if any(r.get(c) is not None for r in sel)]
    out = []
    for model in dict.fromkeys(model_label(r) for r in sel):
        mrows = sorted((r for r in sel if model_label(r) == model), key=lambda r: plots.variant_rank(r["variant"]))
        body, classes = [], []
        for r in mrows:
            if r["status"] != "ok":
                body.append([html.escape(r["variant"]),
                             f"{r['status']}: {html.escape(str(r.get('error') or ''))[:160]}",
                             "", "", "", ""] + [fmt_cell(r.get(c), c) for c in qcols])
                classes.append(r["status"])
                continue
            vram = r.get("peak_gpu_nvml_gb") or r.get("peak_gpu_mem_gb")
            load = fmt_cell(r.get("load_read_s")) + " s"
            if r.get("load_quantize_s"):
                load += f" (+{r['load_quantize_s']:.0f} s one-time quantization)"
            body.append([html.escape(r["variant"]), fmt_cell(r.get("peak_rss_gb")) + " GB",
                         (fmt_cell(vram) + " GB") if vram else "–", load, fmt_cell(r.get("e2e_short_s")) + " s",
                         fmt_cell(r.get("e2e_long_s")) + " s"] + [fmt_cell(r.get(c), c) for c in qcols])
            classes.append("")
        out.append(f"<h3>{html.escape(model)}</h3>" + html_table(
            ["variant", "RAM (peak RSS)", "VRAM (peak)", "load", f"short answer ({SHORT_TOKENS} tok)",
             f"long answer ({LONG_TOKENS} tok)"] + [QUALITY_HEADERS[c] for c in qcols], body, classes, left=(0, 1)))
    bs, p, n = setting
    return "".join(out) + (f'<p class="small">Batch {bs}, prompt {p} tokens. Answer times = time to first token '
                           f"+ the measured gaps to token {SHORT_TOKENS} / {LONG_TOKENS}; where the run made fewer "
                           f"than that ({n} new tokens), the rest is extrapolated at the measured decode pace.</p>")


QUALITY_HEADERS = {"perplexity": "ppl en", "perplexity_zh": "ppl zh", "accuracy": "ARC-Easy acc"}


def quality_section(rows: list[dict], cfg: dict) -> str:
    """The quality-vs-memory scatter, a per-variant table, and why some rows have no quality."""
    if not cfg.get("quality"):
        return ("<p>Quality was not measured in this run (<code>--quality</code> in the CLI, "
                "“Measure quality” in the Benchmark tab).</p>")
    parts = ['<p class="small">Perplexity: sliding window (512 tokens, stride 256) over held-out English '
             "(FLORES+ devtest) and Chinese (HSK sentences) text; accuracy: zero-shot ARC-Easy, each choice "
             "scored by its log-likelihood per character (acc_norm). The GPTQ/AWQ calibration text is different "
             "text. Perplexity is per token: compare variants of one model, not models with each other "
             "(their tokenizers differ). Sources and licenses: <code>benchmarks/data/quality/SOURCES.md</code>.</p>"]
    if any(r.get("random_weights") for r in rows):
        parts.append('<p class="warn">Models with random weights (“[random weights]”) have no quality numbers: '
                     "their weights are noise, so their perplexity and accuracy would only measure the noise. "
                     "Their speed and memory are real.</p>")
    parts.append(figure_html(plots.quality_figure(rows)))
    seen, body, classes = set(), [], []
    for r in rows:
        key = (model_label(r), r["variant"])
        if key in seen or r.get("random_weights"):
            continue
        seen.add(key)
        body.append([html.escape(key[0]), html.escape(r["variant"]), fmt_cell(r.get("perplexity"), "perplexity"),
                     fmt_cell(r.get("perplexity_zh"), "perplexity_zh"), fmt_cell(r.get("accuracy"), "accuracy"),
                     fmt_cell(r.get("weights_gb")),
                     fmt_cell(r.get("quality_tokens")), fmt_cell(r.get("quality_items")), fmt_cell(r.get("quality_s")),
                     fmt_cell(r.get("quality_error") or ("" if r.get("perplexity") is not None or r["status"] == "ok"
                                                     else f"not loaded ({r['status']})"))])
        classes.append("error" if r.get("quality_error") else "")
    if body:
        parts.append(html_table(["model", "variant", "ppl en", "ppl zh", "ARC-Easy acc", "weights GB",
                             "tokens scored", "MC items", "quality s", "quality error"], body, classes,
                            left=(0, 1, 9)))
    return "".join(parts)


def speed_table(rows: list[dict]) -> str:
    """Decode speed against both yardsticks, per row that has either: the memory roofline (``roofline_fraction``)
    and transformers' own static-cache generate on the same model (``x_transformers``, from ``--peer``)."""
    sel = [r for r in rows if r["status"] == "ok" and (r.get("roofline_fraction") is not None
                                                       or r.get("x_transformers") is not None)]
    if not sel:
        return ""
    cols = ["model", "variant", "decode_mode", "kernel", "batch_size", "prompt_tokens", "new_tokens",
            "decode_tok_s", "roofline_tok_s", "roofline_fraction", "x_transformers"]
    body = [[fmt_cell(model_label(r) if c == "model" else r.get(c), c) for c in cols] for r in sel]
    note = ("" if any(r.get("x_transformers") is not None for r in sel) else
            '<p class="small">No transformers peer rows in this run (<code>--peer transformers-static</code>): '
            "the × transformers column is empty.</p>")
    return ("<h2>Decode speed against the roofline and transformers</h2>" + html_table(
        ["model", "variant", "decode", "kernel", "batch", "prompt", "new", "decode tok/s", "roofline tok/s",
         "of roofline", "× transformers"], body, left=(0, 1, 2, 3)) +
        '<p class="small">× transformers: decode tok/s over that of transformers\' own '
        "<code>generate(cache_implementation=\"static\")</code> on the same model and variant, batch, prompt and "
        "new tokens, measured in the same run (its own row: 1.00).</p>" + note)


def full_table(rows: list[dict]) -> str:
    body = [[fmt_cell(model_label(r) if c == "model" else r.get(c), c) for c in FULL_COLS] for r in rows]
    classes = [r["status"] if r["status"] != "ok" else "" for r in rows]
    return html_table(FULL_COLS, body, classes, left=(0, 1, 5, 6, len(FULL_COLS) - 1))


def reference_table(rows: list[dict]) -> str:
    ratios, note = plots.reference_ratios(rows)
    if not ratios:
        return "<p>No fp16/bf16 baseline in this run: nothing to put beside the published ratios.</p>"
    body = [[html.escape(r["model"]), r["variant"], html.escape(r["reference"]), fmt_cell(r["ref_tok_s_ratio"]),
             fmt_cell(r["run_tok_s_ratio"]), fmt_cell(r["ref_mem_ratio"]), fmt_cell(r["run_mem_ratio"])]
            for r in ratios]
    extra = f'<p class="warn">{html.escape(note)}</p>' if note else ""
    return extra + html_table(["model", "variant", "published as", "tok/s ÷ fp16 (published)",
                               "tok/s ÷ fp16 (this run)", "peak mem ÷ fp16 (published)",
                               "peak mem ÷ fp16 (this run)"], body, left=(0, 1, 2))


def with_decode_label(r: dict) -> dict:
    """Rows decoded by the fast path show as ``<variant>+fast`` in plots and tables (beside the eager rows), the
    transformers peer's as ``<variant>+transformers-static`` and the unfused fast decoder's as
    ``<variant>+fast-unfused`` / ``+fast-tinygemm`` (not as one more fast row)."""
    from .config import AB_MODES, PEER_MODES
    mode, variant = r.get("decode_mode"), str(r.get("variant", ""))
    if mode in PEER_MODES and not variant.endswith(f"+{mode}"):
        return dict(r, variant=f"{variant}+{mode}")
    requested = (r.get("raw") or {}).get("decode_requested")
    if requested in AB_MODES and not variant.endswith(f"+{requested}"):
        return dict(r, variant=f"{variant}+{requested}")
    if mode and mode != "eager" and mode not in PEER_MODES and not variant.endswith("+fast"):
        return dict(r, variant=f"{variant}+fast")
    return r


def render(data: dict, plotly_src: str | None = None) -> str:
    if data.get("config", {}).get("kind") == "serving":   # python -m benchmarks serve: its own page
        from .serving_report import render_serving
        return render_serving(data)
    rows, env, cfg = data["rows"], data.get("environment", {}), data.get("config", {})
    rows = [with_decode_label(r) for r in add_peer_ratios([dict(r) for r in rows])]   # files before the column
    name = cfg.get("name") or Path(str(cfg.get("out") or "run")).name
    warns = []
    if any(r.get("random_weights") for r in rows):
        warns.append("Some models have <b>random weights</b> (marked “[random weights]”, hatched bars, hollow "
                     "markers): their speed and memory are real, their answers are noise.")
    bad = [r for r in rows if r["status"] != "ok"]
    if bad:
        counts = {s: sum(1 for r in bad if r["status"] == s) for s in ("oom", "error", "unsupported")}
        warns.append("Rows that did not run: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v) +
                     " (see the full table).")
    load, cores = (env.get("load_average_at_start") or [0])[0], env.get("cpu_cores_logical") or 1
    if env.get("device") == "cpu" and load > 0.5 * cores:
        warns.append(f"The machine was busy when the run started (load average {load} on {cores} CPU threads, "
                     f"{env.get('load_average_at_end', ['?'])[0]} at the end): CPU timings are disturbed by "
                     f"other processes; compare variants within this run only, and prefer the min–max whiskers.")
    if data.get("cancelled"):
        warns.append("This run was stopped before the end.")
    if not data.get("finished"):
        warns.append("This run is still in progress (or ended abruptly): the report shows the rows so far.")
    s = data.get("summary", {})
    ov = s.get("harness_overhead_median")
    gpu = ", ".join(env.get("gpu_names") or []) or "none"
    head = (f"<p><b>{html.escape(str(env.get('date', '')))}</b> · device <b>{html.escape(str(env.get('device')))}"
            f"</b> · GPU: {html.escape(gpu)} (driver {env.get('driver') or '–'}, CUDA {env.get('cuda') or '–'}) · "
            f"CPU: {html.escape(str(env.get('cpu_model')))} ({env.get('cpu_cores_logical')} threads, "
            f"{env.get('ram_gb')} GB RAM, load average at start {env.get('load_average_at_start')})<br>"
            f"torch {env.get('versions', {}).get('torch')} · transformers {env.get('versions', {}).get('transformers')}"
            f" · git {html.escape(str(env.get('git', {}).get('commit')))[:12]} · repeats {cfg.get('repeats')}, "
            f"warm-up {cfg.get('warmup')}, seed {cfg.get('seed')}<br>"
            f"<code>{html.escape(str(env.get('command')))}</code></p>"
            + (f"<p>Harness overhead (engine + trackers vs a bare <code>model.generate</code>, same tokens, "
               f"interleaved): median <b>{ov * 100:+.1f}%</b>, max {s.get('harness_overhead_max', 0) * 100:+.1f}% "
               f"(target &lt; 3%).</p>" if ov is not None else ""))
    figs = [plots.bars_figure(rows), plots.scatter_figure(rows)] + \
        [plots.sweep_figure(rows, a) for a in ("batch_size", "prompt_tokens", "new_tokens")]
    body = [f"<h1>Benchmark: {html.escape(name)}</h1>", head,
            *[f'<div class="warn">{w}</div>' for w in warns],
            "<h2>At a glance</h2>", compact_table(rows), speed_table(rows),
            "<h2>Plots</h2>", *[figure_html(f) for f in figs if f],
            "<h2>Quality</h2>", quality_section(rows, cfg),
            "<h2>Against published numbers</h2>",
            '<p class="small">optimum-benchmark, Mistral-7B-v0.1 on an A100-80GB, prompt 512, 1000 new tokens, '
            "batch 1 (<code>benchmarks/references/optimum_benchmark_mistral7b_a100.csv</code>). Only ratios are "
            "comparable: hardware, model size, kernels and versions differ.</p>",
            figure_html(plots.reference_figure(rows)), reference_table(rows), guides_html(rows),
            "<h2>All rows</h2>", full_table(rows),
            '<p class="small">ttft = prompt in → first new token; decode tok/s = tokens after the first ÷ their '
            "time (summed over the batch for batch &gt; 1); itl = gaps between tokens (all repeats pooled); p90 "
            "columns are the 90th percentile over repeats; memory peaks are the maximum over repeats; RSS is the "
            "whole worker process (weights included). Batch 1 is timed through the chat engine "
            "(<code>stream_reply</code>), larger batches through a bare greedy loop. Each (model, variant) runs "
            "in its own process. GB = 2<sup>30</sup> bytes. Per-repeat values are in results.json.</p>",
            "<h2>Environment and settings</h2>",
            "<pre>" + html.escape(json.dumps({'environment': env, 'config': cfg,
                                              'prompt_source': data.get('prompt_source')},
                                             indent=1, default=str)) + "</pre>"]
    return html_page(f"Benchmark {name}", "".join(body), plotly_src)


def write_report(out_dir: str | Path, plotly_js: str | Path | None = None) -> Path:
    """Regenerate report.html from the folder's results.json; returns its path. ``plotly_js``: a file the page
    loads plotly's script from (written if missing or of another plotly version) instead of holding it inline."""
    data = load_results(out_dir)
    path = Path(out_dir) / "report.html" if Path(out_dir).is_dir() else Path(out_dir).with_name("report.html")
    src = shared_plotly_js(plotly_js, path) if plotly_js else None
    atomic_write(path, render(data, src))
    return path


__all__ = ["write_report", "render", "compact_table", "COLUMNS"]
