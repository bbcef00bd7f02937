"""The app's Benchmark tab: pick models, variants and sizes; the sweep runs in the background (one worker process
per (model, variant), see ``benchmarks.runner``) while a live table and plots fill in; the results download as a zip.

A ``playground.tabs`` plugin (``playground/ui/plugins.py``; declared in pyproject.toml): ``build_tab(ctx)`` adds
the tab to the app after the built-in ones, ``served_folders()`` names the folder whose zips the browser may
download, and ``css()`` adds the results table's rules to the app's CSS. It lives in benchmarks/ because it
drives the runner; playground/ never imports it.
``build_benchmark_tab(manager)`` builds the tab's content alone (call it inside ``with gr.Tab("Benchmark"):``).
The sweep runs in other processes, so chat keeps working in this one; while it runs, a banner says that the
device is shared (replies slow down and the benchmark's timings are disturbed).
"""
from __future__ import annotations

import html
import secrets
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr

from playground.catalog import CATALOG, DEFAULT_MODEL
from playground.manager import ModelManager
from playground.variants import VARIANTS

from .sweep_checks import SHARED_CAPS, check_model_names, check_shared_caps, check_shared_models

PRIVATE = "private"
TABLE_COLS = ["model", "variant", "batch_size", "prompt_tokens", "new_tokens", "status", "decode_tok_s", "ttft_ms",
              "itl_p50_ms", "e2e_long_s", "peak_rss_gb", "peak_gpu_mem_gb", "weights_gb", "load_read_s",
              "perplexity", "perplexity_zh", "accuracy", "error"]
# what the live table calls each column (the results files keep the column names)
TABLE_LABELS = {"model": "model", "variant": "variant", "batch_size": "batch", "prompt_tokens": "prompt tokens",
                "new_tokens": "new tokens", "status": "status", "decode_tok_s": "decode tok/s", "ttft_ms": "TTFT ms",
                "itl_p50_ms": "ITL p50 ms", "e2e_long_s": "256-token answer s", "peak_rss_gb": "peak RAM GB (RSS)",
                "peak_gpu_mem_gb": "peak GPU GB (allocator)", "weights_gb": "weights GB",
                "load_read_s": "load s (read)", "perplexity": "perplexity en", "perplexity_zh": "perplexity zh",
                "accuracy": "accuracy (ARC-Easy)", "error": "error"}
ALWAYS_SHOWN = ("model", "variant", "batch_size", "prompt_tokens", "new_tokens", "status")   # even when empty
# headers on one line, the table scrolling sideways: one long error made the other headers one letter wide
TABLE_CSS = """
#bench-table th, #bench-table th * { white-space: nowrap !important; word-break: keep-all !important;
                                     overflow-wrap: normal !important; }
#bench-table .table-wrap { overflow-x: auto; }
"""
RESULTS_ROOT: Path | None = None   # where the app's runs go; None: ``results_root()``
NOTE_CHARS = 44                    # a line of an empty plot panel's note, on a 390 px phone


@dataclass
class Job:
    out: str
    device: str
    owner: str = ""                 # the user who started it (shared mode: only they see and stop it)
    cancel: threading.Event = field(default_factory=threading.Event)
    rows: list = field(default_factory=list)
    fraction: float = 0.0
    message: str = "starting"
    error: str | None = None
    done: bool = False
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    version: int = 0


_LOCK = threading.Lock()
_JOB: Job | None = None          # one sweep at a time per process: they would share (and disturb) the device


def results_root() -> Path:
    """Where runs started in the app are written: ``--results-dir`` (``PLAYGROUND_RESULTS_DIR``), else the user's
    cache (``~/.cache/quant-playground/results``); never the repository's ``results/`` (committed runs only)."""
    import os

    from playground.catalog import cache_root
    if RESULTS_ROOT is not None:
        return Path(RESULTS_ROOT)
    configured = os.environ.get("PLAYGROUND_RESULTS_DIR")
    return Path(configured).expanduser() if configured else cache_root() / "results"


def current_job() -> Job | None:
    return _JOB


def _ints(name: str, text: str) -> list[str]:
    items = [t.strip() for t in str(text or "").replace(";", ",").split(",") if t.strip()]
    if not items:
        raise ValueError(f"{name}: give at least one number (comma separated)")
    return items


def start_job(manager: ModelManager, models, variants, batch_sizes, prompt_tokens, new_tokens, repeats, warmup,
              device, memory_cap_gb, unload_first, quality=False, ctx=None, owner: str = "") -> Job:
    """Validate, then run the sweep in a background thread. Raises ValueError with a readable message.
    ``ctx`` (the UI context) brings the sharing policy; the checks are ``sweep_checks``'s (more in shared mode)."""
    global _JOB
    from .config import ConfigError, RunConfig
    from .runner import run_sweep
    shared = ctx is not None and ctx.policy.shared
    if shared:
        if not memory_cap_gb:                   # a memory cap by default: the app's own budget
            memory_cap_gb = manager.budget_bytes / 2 ** 30
        check_shared_models(ctx, models, float(memory_cap_gb))
    check_model_names(models)
    with _LOCK:
        if _JOB is not None and not _JOB.done:
            raise ValueError("a benchmark is already running: wait for it or press Stop" if not shared or
                             _JOB.owner == owner else "another user's benchmark is running on this machine: "
                             "try again when it is done")
        # a random part: the folder (and its zip's download address) cannot be guessed by another user
        out = results_root() / f"ui-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(4)}"
        try:
            cfg = RunConfig(models=list(models or []), variants=list(variants or []),
                            batch_sizes=_ints("batch sizes", batch_sizes),
                            prompt_tokens=_ints("prompt tokens", prompt_tokens),
                            new_tokens=_ints("new tokens", new_tokens), repeats=int(repeats or 1),
                            warmup=int(warmup or 0), device=device or "auto", out=str(out), name=out.name,
                            memory_cap_gb=float(memory_cap_gb) if memory_cap_gb else None,
                            quality=bool(quality))
        except (ConfigError, TypeError) as exc:
            raise ValueError(str(exc)) from None
        if shared:
            check_shared_caps(cfg)
        job = Job(out=str(out), device=cfg.device, owner=owner)
        _JOB = job
    if unload_first:
        if ctx is not None:
            ctx.unload_idle()       # shared mode keeps what is generating a reply for someone
        else:
            manager.unload_all()

    def on_row(row):
        job.rows.append(row)
        job.version += 1

    def progress(fraction, message):
        job.fraction, job.message = fraction, message

    def work():
        try:
            run_sweep(cfg, on_row=on_row, progress=progress, cancel=job.cancel,
                      argv=["playground UI", "Benchmark tab"])
        except Exception as exc:  # noqa: BLE001 - shown in the tab
            job.error = f"{type(exc).__name__}: {exc}"
        finally:
            job.ended = time.monotonic()
            job.done = True
            job.version += 1
            if shared:
                print(f"* Benchmark of {owner or 'a user'} ended ({'stopped' if job.cancel.is_set() else 'done'}): "
                      f"{len(job.rows)} row(s) in {job.out}", flush=True)

    if shared:   # the host sees every user's sweep in the app's console (users see only their own)
        print(f"* Benchmark started by {owner or 'a user'}: {', '.join(cfg.models)} × {', '.join(cfg.variants)}, "
              f"{cfg.repeats} repeats → {job.out}", flush=True)
    threading.Thread(target=work, name="benchmark-sweep", daemon=True).start()
    return job


def busy_banner(job: Job | None) -> str:
    if job is None or job.done:
        return ""
    return (f'<div class="warn" style="background:#fff4ce;border:1px solid #e0c36a;padding:8px 12px">◔ A benchmark '
            f"is running on <b>{html.escape(job.device)}</b>. Chat still works, but it shares the device: replies "
            f"are slower and chatting disturbs the benchmark's timings.</div>")


def status_text(job: Job | None) -> str:
    if job is None:
        return "No benchmark run yet in this session."
    elapsed = (job.ended or time.monotonic()) - job.started
    ok = sum(r["status"] == "ok" for r in job.rows)
    head = (f"**{'Done' if job.done else 'Running'}** · {len(job.rows)} row(s), {ok} ok · "
            f"{100 * job.fraction:.0f}% · {elapsed:.0f} s · {html.escape(job.message)}")
    if job.cancel.is_set():
        head += " · stopped"
    if job.error:
        head += f"  \n✗ {html.escape(job.error)}"
    return head + f"  \nResults folder: `{job.out}`"


def table_columns(rows: list[dict]) -> list[str]:
    """The columns of ``TABLE_COLS`` worth a place: ``ALWAYS_SHOWN`` and those with a value in some row (a CPU run
    has no GPU memory, a run without quality no perplexity, an all-ok run no error)."""
    return [c for c in TABLE_COLS if c in ALWAYS_SHOWN or any(r.get(c) not in (None, "") for r in rows)]


def table_rows(job: Job | None, columns: list[str] = TABLE_COLS) -> list[list]:
    if job is None:
        return []

    def cell(r, c):
        v = r.get(c)
        if c == "model" and r.get("random_weights"):
            return f"{v} [random weights]"
        return round(v, 3) if isinstance(v, float) else ("" if v is None else v)
    return [[cell(r, c) for c in columns] for r in job.rows]


def results_table(job: Job | None):
    """The live table: the columns with something to show, under their labels."""
    import pandas as pd
    columns = table_columns(job.rows if job is not None else [])
    return pd.DataFrame(table_rows(job, columns), columns=[TABLE_LABELS[c] for c in columns])


def figures(rows: list[dict]):
    from . import plots
    sweep = next((f for f in (plots.sweep_figure(rows, a) for a in ("batch_size", "prompt_tokens", "new_tokens"))
                  if f is not None), None)
    return plots.bars_figure(rows), plots.scatter_figure(rows), sweep


def note_figure(text: str):
    """A plot panel that says why there is nothing to plot (instead of gradio's empty broken-chart panel)."""
    import plotly.graph_objects as go
    fig = go.Figure()
    lines = textwrap.wrap(text, NOTE_CHARS)     # one long line ran off a phone's screen
    fig.add_annotation(text="<br>".join(html.escape(line) for line in lines), x=0.5, y=0.5, xref="paper",
                       yref="paper", showarrow=False,
                       font={"size": 14})
    fig.update_layout(xaxis={"visible": False}, yaxis={"visible": False}, height=220,
                      margin={"l": 10, "r": 10, "t": 10, "b": 10}, plot_bgcolor="rgba(0,0,0,0)")
    return fig


def shown_figures(rows: list[dict]):
    """``figures(rows)`` with a note in each panel that has nothing to plot."""
    bars, scatter, sweep = figures(rows)
    no_ok = "nothing to plot yet: no row has finished ok"
    if not any(r.get("status") == "ok" for r in rows):
        return note_figure(no_ok), note_figure(no_ok), note_figure(no_ok)
    return (bars or note_figure(no_ok), scatter or note_figure(no_ok),
            sweep or note_figure("nothing to plot yet: the sweep plot needs two or more batch sizes, prompt "
                                 "lengths or new-token counts (comma separated)"))


def build_benchmark_tab(manager: ModelManager, device: str | None = None, default_model: str = DEFAULT_MODEL,
                        ctx=None) -> None:
    from .random_weights import list_architectures

    from playground.ui.common import user_id
    shared = ctx is not None and ctx.policy.shared
    offered = [m for m in ctx.policy.offered_models() if m not in CATALOG] if ctx is not None else []
    model_choices = list(CATALOG) + offered + [f"random:{a}" for a in list_architectures()]

    def visible(job: Job | None, request) -> Job | None:
        """The job this user may see: in shared mode only their own."""
        if job is None or not shared or job.owner == user_id(request):
            return job
        return None
    gr.Markdown("Measure load time, time to first token, decode speed and memory of each variant. Every "
                "(model, variant) runs in its own process so memory starts clean; an out-of-memory or a crash "
                "becomes a row. `random:<architecture>` models have random weights (real speed, noise answers).")
    if shared:
        gr.Markdown(f"On this shared app a sweep takes the shipped architectures and the host's models, at most "
                    f"{SHARED_CAPS['combinations']} combinations, {SHARED_CAPS['repeats']} repeats and "
                    f"{SHARED_CAPS['new_tokens']} new tokens; with no memory cap given, the app's memory budget is "
                    f"the cap. One sweep runs at a time on the machine; only you see and stop yours.",
                    elem_id="bench-shared")
    banner = gr.HTML("" if shared else busy_banner(_JOB), elem_id="bench-banner")
    with gr.Row():
        models = gr.Dropdown(model_choices, value=[default_model], multiselect=True, allow_custom_value=True,
                             label="Models", elem_id="bench-models", scale=2)
        variants = gr.CheckboxGroup(list(VARIANTS), value=["bf16", "int8", "nf4"], label="Variants",
                                    elem_id="bench-variants", scale=3)
    with gr.Row():
        batch_sizes = gr.Textbox("1", label="Batch sizes", info="comma separated", elem_id="bench-bs")
        prompt_tokens = gr.Textbox("128", label="Prompt tokens", info="comma separated", elem_id="bench-prompt")
        new_tokens = gr.Textbox("64", label="New tokens", info="comma separated", elem_id="bench-new")
        repeats = gr.Number(3, precision=0, minimum=1, label="Repeats", elem_id="bench-repeats")
        warmup = gr.Number(1, precision=0, minimum=0, label="Warm-up runs", elem_id="bench-warmup")
    with gr.Row():
        dev = gr.Dropdown(["auto", "cpu", "cuda"], value=device or "auto", label="Device", elem_id="bench-device")
        cap = gr.Number(0, minimum=0, label="Memory cap, GB (0 = none)",
                        info="going over it is a real out-of-memory → an oom row", elem_id="bench-cap")
        unload = gr.Checkbox(False, label="Unload the chat's models first",
                             info="frees the memory they hold (cleaner numbers; chat reloads on next use)",
                             elem_id="bench-unload")
        quality = gr.Checkbox(False, label="Measure quality (perplexity + accuracy)",
                              info="English/Chinese perplexity and ARC-Easy accuracy of each real-weight variant "
                                   "(about 30 s more per variant on CPU; random weights get none)",
                              elem_id="bench-quality")
    with gr.Row():
        run_btn = gr.Button("▶ Run benchmark", variant="primary", elem_id="bench-run")
        stop_btn = gr.Button("■ Stop", variant="stop", interactive=False, elem_id="bench-stop")
    status = gr.Markdown(status_text(None if shared else _JOB), elem_id="bench-status")
    shown = results_table(None if shared else _JOB)
    table = gr.Dataframe(value=shown, headers=list(shown.columns), interactive=False, wrap=True, max_chars=160,
                         label="Results (live)", elem_id="bench-table")
    compact = gr.HTML("", elem_id="bench-compact")
    with gr.Row():
        # no label badge: it sat on the figure's title (which says the same)
        bars = gr.Plot(label="Per variant", show_label=False, elem_id="bench-bars")
    with gr.Row():
        scatter = gr.Plot(label="Memory vs throughput", show_label=False, elem_id="bench-scatter")
        sweep = gr.Plot(label="Sweep", show_label=False, elem_id="bench-sweep")
    download = gr.File(label="Download results (csv + json + html report)", interactive=False,
                       elem_id="bench-download")
    timer = gr.Timer(1.0)   # always on: cheap when nothing changed, and a reloaded page finds a running sweep
    seen = gr.State(-1)

    # gradio injects gr.Request only into named positional parameters: no *args here
    def start(models_v, variants_v, bs_v, prompt_v, new_v, repeats_v, warmup_v, dev_v, cap_v, unload_v, quality_v,
              request: gr.Request):
        try:
            start_job(manager, models_v, variants_v, bs_v, prompt_v, new_v, repeats_v, warmup_v, dev_v, cap_v,
                      unload_v, quality_v, ctx=ctx, owner=user_id(request))
        except ValueError as exc:
            gr.Warning(str(exc))
            return status_text(visible(_JOB, request)), gr.skip(), gr.skip(), gr.skip(), -1
        return status_text(_JOB), busy_banner(_JOB), gr.Button(interactive=False), gr.Button(interactive=True), -1

    def stop(request: gr.Request = None):
        job = visible(_JOB, request)
        if job is not None and not job.done:
            job.cancel.set()
        return status_text(job)

    def tick(last_version, request: gr.Request = None):
        job = visible(_JOB, request)
        if job is None or (job.done and job.version == last_version):
            return (gr.skip(),) * 10 + (last_version,)
        finished = job.done
        common = [status_text(job), busy_banner(job), gr.Button(interactive=finished),
                  gr.Button(interactive=not finished)]
        if job.version == last_version:
            return (*common, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), last_version)
        from .report import compact_table
        rows = list(job.rows)
        figs = shown_figures(rows) if rows else (None, None, None)
        zip_path = None
        if finished and (Path(job.out) / "results.json").exists():
            from .bundle import make_zip
            zip_path = make_zip(job.out)
        return (*common, results_table(job), compact_table(rows) if rows else "", *figs, zip_path, job.version)

    outs = [status, banner, run_btn, stop_btn, table, compact, bars, scatter, sweep, download, seen]
    run_btn.click(start, [models, variants, batch_sizes, prompt_tokens, new_tokens, repeats, warmup, dev, cap,
                          unload, quality], [status, banner, run_btn, stop_btn, seen], api_visibility=PRIVATE)
    stop_btn.click(stop, None, [status], api_visibility=PRIVATE, queue=False)
    timer.tick(tick, [seen], outs, api_visibility=PRIVATE, queue=False)


def build_tab(ctx) -> None:
    """The plugin's tab (``playground.ui.plugins``): the benchmark tab in its own ``gr.Tab``."""
    with gr.Tab("Benchmark", id="benchmark", elem_id="tab-benchmark"):
        build_benchmark_tab(ctx.manager, ctx.device, ctx.default_model, ctx=ctx)


def css() -> str:
    """The plugin's CSS, added to the app's (``playground.ui.plugins``)."""
    return TABLE_CSS


def served_folders() -> list[Path]:
    """The plugin's folders the app may send files from (gradio's ``allowed_paths``): the runs' zips."""
    root = results_root()
    root.mkdir(parents=True, exist_ok=True)
    return [root]
