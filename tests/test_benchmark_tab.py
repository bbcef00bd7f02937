"""The Benchmark tab: builds inside the app, runs a sweep in the background, fills a table/plots, offers a zip."""
from __future__ import annotations

import time
import zipfile

import gradio as gr
import pytest

from ui_support import by_elem_id, ui_event, ui_handler


# the Run button's inputs, in the order the click passes them: component elem_id → start_job's parameter
RUN_INPUTS = {"bench-models": "models", "bench-variants": "variants", "bench-bs": "batch_sizes",
              "bench-prompt": "prompt_tokens", "bench-new": "new_tokens", "bench-repeats": "repeats",
              "bench-warmup": "warmup", "bench-device": "device", "bench-cap": "memory_cap_gb",
              "bench-unload": "unload_first", "bench-quality": "quality"}


def _check_benchmark_wiring(blocks):
    """The tab's components (by elem_id, with their kinds and starting values) and the run/stop/timer wiring."""
    import inspect

    from playground.catalog import DEFAULT_MODEL
    from benchmarks import ui_tab as tab
    from playground.variants import VARIANTS
    kinds = {"bench-banner": gr.HTML, "bench-models": gr.Dropdown, "bench-variants": gr.CheckboxGroup,
             "bench-bs": gr.Textbox, "bench-prompt": gr.Textbox, "bench-new": gr.Textbox, "bench-repeats": gr.Number,
             "bench-warmup": gr.Number, "bench-device": gr.Dropdown, "bench-cap": gr.Number,
             "bench-unload": gr.Checkbox, "bench-quality": gr.Checkbox, "bench-run": gr.Button,
             "bench-stop": gr.Button, "bench-status": gr.Markdown, "bench-table": gr.Dataframe,
             "bench-compact": gr.HTML, "bench-bars": gr.Plot, "bench-scatter": gr.Plot, "bench-sweep": gr.Plot,
             "bench-download": gr.File}
    c = {elem_id: by_elem_id(blocks, elem_id) for elem_id in kinds}
    for elem_id, kind in kinds.items():
        assert type(c[elem_id]) is kind, (elem_id, type(c[elem_id]))
    assert c["bench-models"].multiselect and c["bench-models"].value == [DEFAULT_MODEL]
    assert [v for v, _ in c["bench-variants"].choices] == list(VARIANTS)
    assert c["bench-variants"].value == ["bf16", "int8", "nf4"]
    assert (c["bench-bs"].value, c["bench-prompt"].value, c["bench-new"].value) == ("1", "128", "64")
    assert (c["bench-repeats"].value, c["bench-warmup"].value, c["bench-cap"].value) == (3, 1, 0)
    assert c["bench-unload"].value is False and c["bench-quality"].value is False
    assert c["bench-stop"].interactive is False
    assert c["bench-table"].headers == [tab.TABLE_LABELS[k] for k in tab.ALWAYS_SHOWN]   # labels; the rest once filled
    assert c["bench-download"].interactive is False

    # ▶ Run: start(...) gets the 11 settings in start_job's order and updates status, banner, both buttons, seen
    run = ui_event(blocks, "bench-run")
    assert run.fn.__name__ == "start" and run.fn.__module__ == "benchmarks.ui_tab"
    assert [i.elem_id for i in run.inputs] == list(RUN_INPUTS)
    params = list(inspect.signature(tab.start_job).parameters)
    n = len(RUN_INPUTS)
    assert params[1:1 + n] == list(RUN_INPUTS.values()), params  # after the manager, the same order,
    assert params[1 + n:] == ["ctx", "owner"], params              # then who asks (the sharing policy, the user)
    assert [o.elem_id for o in run.outputs[:4]] == ["bench-status", "bench-banner", "bench-run", "bench-stop"]
    assert len(run.outputs) == 5 and isinstance(run.outputs[4], gr.State)
    seen = run.outputs[4]
    # ■ Stop: no inputs, answers at once (not queued behind the sweep), updates the status
    stop = ui_event(blocks, "bench-stop")
    assert stop.fn.__name__ == "stop" and stop.inputs == [] and stop.queue is False
    assert [o.elem_id for o in stop.outputs] == ["bench-status"]
    # the timer polls the job into the status, banner, buttons, table, plots and the zip
    ticks = [f for f in blocks.fns.values()
             if f.name == "tick" and getattr(f.fn, "__module__", "") == "benchmarks.ui_tab"]
    assert len(ticks) == 1 and ticks[0].inputs == [seen]
    assert isinstance(blocks.blocks[ticks[0].targets[0][0]], gr.Timer) and ticks[0].targets[0][1] == "tick"
    assert [getattr(o, "elem_id", None) for o in ticks[0].outputs] == [
        "bench-status", "bench-banner", "bench-run", "bench-stop", "bench-table", "bench-compact", "bench-bars",
        "bench-scatter", "bench-sweep", "bench-download", None]
    assert ticks[0].outputs[-1] is seen


def test_tab_builds_standalone_and_in_the_app(manager):
    from benchmarks.ui_tab import build_benchmark_tab
    with gr.Blocks() as demo:
        with gr.Tab("Benchmark"):
            build_benchmark_tab(manager)
    _check_benchmark_wiring(demo)
    from playground.ui.app import build_app
    app = build_app(manager)
    _check_benchmark_wiring(app)
    tab, node = by_elem_id(app, "tab-benchmark"), by_elem_id(app, "bench-run")
    assert isinstance(tab, gr.Tab) and tab.label == "Benchmark"
    while node is not None and node is not tab:       # the Run button sits inside the app's Benchmark tab
        node = node.parent
    assert node is tab
    assert ui_handler(app, "benchmarks.ui_tab", "start") is ui_event(app, "bench-run").fn


def test_bad_settings_are_refused_with_a_message(manager):
    from benchmarks.ui_tab import start_job
    with pytest.raises(ValueError, match="unknown variant"):
        start_job(manager, ["smollm2-135m-instruct"], ["int3"], "1", "32", "8", 1, 0, "cpu", None, False)
    with pytest.raises(ValueError, match="batch sizes"):
        start_job(manager, ["smollm2-135m-instruct"], ["bf16"], "", "32", "8", 1, 0, "cpu", None, False)


class _Request:
    session_hash = "bench-tab-test"


@pytest.mark.slow
def test_background_sweep_fills_table_plots_and_zip(manager, smollm_bf16, tmp_path, monkeypatch):
    from benchmarks import runner
    from benchmarks import ui_tab as tab
    from playground.ui.app import build_app
    monkeypatch.setattr(tab, "RESULTS_ROOT", tmp_path)
    app = build_app(manager)
    job = tab.start_job(manager, ["random:tiny-llama"], ["bf16"], "1,2", "16", "4", 1, 0, "cpu", None, False)
    with pytest.raises(ValueError, match="already running"):
        tab.start_job(manager, ["random:tiny-llama"], ["bf16"], "1", "16", "4", 1, 0, "cpu", None, False)
    assert "benchmark is running" in tab.busy_banner(job)
    # the Chat tab keeps answering during the sweep, and says that it shares the device with it
    deadline = time.monotonic() + 30
    while not runner.is_running() and time.monotonic() < deadline:   # the sweep's thread has started
        time.sleep(0.05)
    assert runner.is_running() and not job.done
    send = ui_handler(app, "chat_handlers", "send")
    frames = list(send("smollm2-135m-instruct", "bf16", "What is the capital of France?", [], "", 8, 0.7, 0.9, 50, 1.0,
                       -1, True, "default", _Request(), lambda *a, **k: None))
    history, status_line = frames[-1][1], frames[-1][3]
    assert "Paris" in history[-1]["content"]
    assert "A benchmark is running on this machine" in status_line, status_line
    deadline = time.monotonic() + 240
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job.done and job.error is None and not runner.is_running()
    assert [r["status"] for r in job.rows] == ["ok", "ok"]
    table = tab.table_rows(job)
    assert table[0][0] == "random:tiny-llama [random weights]"
    bars, scatter, sweep = tab.figures(job.rows)
    assert bars is not None and scatter is not None and sweep is not None   # batch sweep 1 → 2
    from benchmarks.bundle import make_zip
    names = zipfile.ZipFile(make_zip(job.out)).namelist()
    assert len(names) == 3 and tab.busy_banner(job) == ""
    # what the tab's timer shows once the run is over: the table, the plots and the zip to download
    tick = ui_handler(app, "benchmarks.ui_tab", "tick")
    status, banner, run_btn, stop_btn, rows, compact, *figs, zip_path, version = tick(-1)
    assert banner == "" and version == job.version and len(rows) == 2 and all(f is not None for f in figs)
    assert sorted(zipfile.ZipFile(zip_path).namelist()) == sorted(names)
    from playground.ui.common import device_busy_note
    assert device_busy_note() == ""                                  # and the chat's note is gone


def test_app_runs_go_to_the_users_cache_or_the_results_dir_never_the_checkout(manager, tmp_path, monkeypatch):
    """Runs started in the app wrote into the repository's results/ (untracked files in a git checkout)."""
    from pathlib import Path

    from benchmarks import ui_tab as tab
    repo = Path(tab.__file__).resolve().parents[1]
    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("PLAYGROUND_RESULTS_DIR", raising=False)
    assert tab.results_root() == tmp_path / "cache" / "results"
    monkeypatch.setenv("PLAYGROUND_RESULTS_DIR", str(tmp_path / "mine"))          # what --results-dir sets
    assert tab.results_root() == tmp_path / "mine"
    job = tab.start_job(manager, ["random:tiny-llama"], ["bf16"], "1", "16", "4", 1, 0, "cpu", None, False)
    job.cancel.set()
    deadline = time.monotonic() + 120
    while not job.done and time.monotonic() < deadline:
        time.sleep(0.2)
    out = Path(job.out)
    assert job.done and out.parent == tmp_path / "mine" and not out.is_relative_to(repo), out
    other = tab.start_job(manager, ["random:tiny-llama"], ["bf16"], "1", "16", "4", 1, 0, "cpu", None, False)
    other.cancel.set()
    while not other.done and time.monotonic() < deadline:
        time.sleep(0.2)
    assert Path(other.out).name != out.name and len(out.name.rsplit("-", 1)[1]) == 8   # unguessable names


# ---- issue 17 item 6: what the tab shows of a finished run (the tab's own handlers, a made-up job) -------------
def _finished_job(tmp_path, rows):
    from benchmarks import ui_tab as tab
    job = tab.Job(out=str(tmp_path), device="cpu", rows=rows, done=True, version=1, message="done")
    job.ended = job.started
    return job


def _cpu_row(bs=1, **values):
    from benchmarks.results import new_row
    return new_row("smollm2-135m-instruct", "bf16", "cpu", bs, 16, 4, repeats=1, decode_tok_s=20.0 + bs,
                   ttft_ms=40.0, itl_p50_ms=45.0, e2e_long_s=11.0, peak_rss_gb=1.2, weights_gb=0.27,
                   load_read_s=0.8, **values)


def _tick_after(app, monkeypatch, job):
    from benchmarks import ui_tab as tab
    monkeypatch.setattr(tab, "_JOB", job)
    status, banner, run_btn, stop_btn, table, compact, bars, scatter, sweep, zip_path, version = \
        ui_handler(app, "benchmarks.ui_tab", "tick")(-1, _Request())
    return table, (bars, scatter, sweep)


def _note(fig) -> str:
    """The 'nothing to plot' note of a panel ("" for a real plot; its subplot titles are annotations too)."""
    texts = [a.text.replace("<br>", " ") for a in fig.layout.annotations] if fig is not None else []
    return next((t for t in texts if t.startswith("nothing to plot")), "")


def test_an_unknown_model_is_refused_up_front_in_one_line(manager, monkeypatch):
    """Was: the sweep started, and its row said 'ModelNotFoundError: … <- OSError: … <- LocalEntryNotFoundError: …'."""
    from benchmarks import ui_tab as tab
    from playground.ui.app import build_app
    started = []
    monkeypatch.setattr(tab.threading, "Thread", lambda *a, **k: started.append(k) or pytest.fail("a sweep ran"))
    for name, words in (("no-such-model", "no-such-model is not in the local Hugging Face cache and the hub cannot "
                                          "be reached (HF_HUB_OFFLINE=1)"),
                        ("/no/such/folder", "/no/such/folder: no such folder")):
        with pytest.raises(ValueError) as caught:
            tab.start_job(manager, [name], ["bf16"], "1", "16", "4", 1, 0, "cpu", None, False)
        assert str(caught.value).startswith(words) and "<-" not in str(caught.value), caught.value
    warned = []
    monkeypatch.setattr(tab.gr, "Warning", lambda text: warned.append(text))
    monkeypatch.setattr(tab, "_JOB", None)
    start = ui_handler(build_app(manager), "benchmarks.ui_tab", "start")
    out = start(["no-such-model"], ["bf16"], "1", "16", "4", 1, 0, "cpu", 0, False, False, _Request())
    assert len(warned) == 1 and "\n" not in warned[0] and warned[0].startswith("no-such-model is not in the local")
    assert out[0] == tab.status_text(None) and started == [] and tab.current_job() is None


def test_the_results_table_has_labels_one_line_headers_and_only_columns_with_values(manager, tmp_path, monkeypatch):
    """Was: snake_case headers, empty GPU and quality columns on a CPU, and one long error squeezed the other
    headers into one letter per line."""
    from benchmarks import ui_tab as tab
    from playground.ui import plugins
    from playground.ui.app import build_app
    app = build_app(manager)
    table, _ = _tick_after(app, monkeypatch, _finished_job(tmp_path, [_cpu_row(1), _cpu_row(2)]))
    assert list(table.columns) == ["model", "variant", "batch", "prompt tokens", "new tokens", "status",
                                   "decode tok/s", "TTFT ms", "ITL p50 ms", "256-token answer s", "peak RAM GB (RSS)",
                                   "weights GB", "load s (read)"]          # no GPU, quality or error column on a CPU
    assert table["decode tok/s"].tolist() == [21.0, 22.0]
    error = _cpu_row(4, status="error", error="RuntimeError: " + "a long reason " * 40)
    table, _ = _tick_after(app, monkeypatch, _finished_job(tmp_path, [error]))
    assert list(table.columns)[-1] == "error" and table["error"][0].startswith("RuntimeError: a long reason")
    gpu = _cpu_row(1, peak_gpu_mem_gb=3.5, perplexity=12.0)
    table, _ = _tick_after(app, monkeypatch, _finished_job(tmp_path, [gpu]))
    assert "peak GPU GB (allocator)" in table.columns and "perplexity en" in table.columns
    # the headers stay on one line and the table scrolls sideways, in the CSS the app is launched with
    css = plugins.plugin_css()
    assert css == tab.TABLE_CSS and "#bench-table th" in css and "white-space: nowrap" in css
    assert "#bench-table .table-wrap { overflow-x: auto; }" in css
    # the files keep their column names
    from benchmarks.results import COLUMNS
    assert {"decode_tok_s", "ttft_ms", "peak_gpu_mem_gb"} <= set(COLUMNS) and set(tab.TABLE_LABELS) == set(
        tab.TABLE_COLS)


def test_a_panel_with_nothing_to_plot_says_why(manager, tmp_path, monkeypatch):
    """Was: the Sweep plot (and, with only failed rows, every plot) was an empty broken-chart panel."""
    from playground.ui.app import build_app
    app = build_app(manager)
    _, (bars, scatter, sweep) = _tick_after(app, monkeypatch, _finished_job(tmp_path, [_cpu_row(1)]))
    assert bars is not None and scatter is not None and _note(bars) == "" and _note(scatter) == ""
    assert _note(sweep).startswith("nothing to plot yet: the sweep plot needs two or more batch sizes")
    _, figs = _tick_after(app, monkeypatch, _finished_job(tmp_path, [_cpu_row(1), _cpu_row(2)]))
    assert _note(figs[2]) == "" and len(figs[2].data) > 0             # a batch sweep: a real plot
    failed = _cpu_row(1, status="error", error="RuntimeError: boom")
    _, figs = _tick_after(app, monkeypatch, _finished_job(tmp_path, [failed]))
    assert [_note(f) for f in figs] == ["nothing to plot yet: no row has finished ok"] * 3
