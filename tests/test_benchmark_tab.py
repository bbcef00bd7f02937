"""The Benchmark tab: builds inside the app, runs a sweep in the background, fills a table/plots, offers a zip."""
from __future__ import annotations

import time
import zipfile

import gradio as gr
import pytest

from ui_support import ui_handler


def test_tab_builds_standalone_and_in_the_app(manager):
    from playground.ui.benchmark_tab import build_benchmark_tab
    with gr.Blocks() as demo:
        with gr.Tab("Benchmark"):
            build_benchmark_tab(manager)
    assert demo is not None
    from playground.ui.app import build_app
    app = build_app(manager)
    assert "bench-run" in str(app.config)


def test_bad_settings_are_refused_with_a_message(manager):
    from playground.ui.benchmark_tab import start_job
    with pytest.raises(ValueError, match="unknown variant"):
        start_job(manager, ["smollm2-135m-instruct"], ["int3"], "1", "32", "8", 1, 0, "cpu", None, False)
    with pytest.raises(ValueError, match="batch sizes"):
        start_job(manager, ["smollm2-135m-instruct"], ["bf16"], "", "32", "8", 1, 0, "cpu", None, False)


class _Request:
    session_hash = "bench-tab-test"


@pytest.mark.slow
def test_background_sweep_fills_table_plots_and_zip(manager, smollm_bf16, tmp_path, monkeypatch):
    from benchmarks import runner
    from playground.ui import benchmark_tab as tab
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
    send = ui_handler(app, "chat_tab", "send")
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
    tick = ui_handler(app, "benchmark_tab", "tick")
    status, banner, run_btn, stop_btn, rows, compact, *figs, zip_path, version = tick(-1)
    assert banner == "" and version == job.version and len(rows) == 2 and all(f is not None for f in figs)
    assert sorted(zipfile.ZipFile(zip_path).namelist()) == sorted(names)
    from playground.ui.common import device_busy_note
    assert device_busy_note() == ""                                  # and the chat's note is gone
