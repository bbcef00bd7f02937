"""Quality columns in benchmark sweeps: RunConfig.quality, the worker, the CLI flag, the report (CPU)."""
from __future__ import annotations

import csv
import math

import pytest

from benchmarks.config import ConfigError, RunConfig
from benchmarks.results import COLUMNS, QUALITY_COLUMNS, RANDOM_QUALITY_NOTE

SMOL = "smollm2-135m-instruct"


def test_quality_settings_are_validated_and_reach_the_cli():
    from benchmarks.__main__ import _quality_options, build_parser
    assert RunConfig(models=[SMOL]).quality is False
    assert set(QUALITY_COLUMNS) <= set(COLUMNS)
    cfg = RunConfig(models=[SMOL], quality=True, quality_options={"ppl_en_tokens": 64, "mc_items": 0})
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    for bad in ({"nope": 1}, {"mc_items": -1}, {"ppl_en_tokens": 1.5}, {"mc_set": "mmlu"}, {"stride": 0}):
        with pytest.raises(ConfigError, match="quality_options"):
            RunConfig(models=[SMOL], quality=True, quality_options=bad)
    with pytest.raises(ConfigError, match="quality"):
        RunConfig(models=[SMOL], quality="yes")
    args = build_parser().parse_args(["run", "--model", SMOL, "--quality", "--quality-tokens", "512",
                                      "--quality-items", "20"])
    assert args.quality and _quality_options(args) == {"ppl_en_tokens": 512, "ppl_zh_tokens": 256, "mc_items": 20}
    assert not build_parser().parse_args(["run", "--model", SMOL]).quality


class _Events:
    def __init__(self):
        self.messages = []

    def progress(self, fraction, message):
        self.messages.append(message)


def test_quality_failures_become_a_quality_error(monkeypatch):
    """NaN (fp16 overflow) and out-of-memory end as quality_error, not as an exception out of the worker."""
    from benchmarks import quality, worker
    cfg = RunConfig(models=[SMOL], quality=True)
    nan_row = {"perplexity": math.nan, "perplexity_zh": 40.0, "accuracy": 0.25, "accuracy_raw": 0.25,
               "quality_tokens": 6144, "quality_items": 100, "accuracy_nonfinite": 100, "quality_s": 3.0}
    monkeypatch.setattr(quality, "evaluate_quality", lambda lm, **kw: dict(nan_row))
    ev = _Events()
    values, extra = worker.quality_columns(object(), cfg, "m [fp16]", ev)
    assert values["perplexity"] is None and values["accuracy"] is None and values["perplexity_zh"] == 40.0
    assert "English perplexity is nan" in values["quality_error"] and "100 of 100" in values["quality_error"]
    assert set(values) == set(QUALITY_COLUMNS) and ev.messages and "quality" in ev.messages[0]

    def oom(lm, **kw):
        raise MemoryError("cannot allocate memory")
    monkeypatch.setattr(quality, "evaluate_quality", oom)
    values, _ = worker.quality_columns(object(), cfg, "m [fp32]", _Events())
    assert values["quality_error"].startswith("oom: MemoryError")


@pytest.mark.slow
def test_sweep_with_quality_real_and_random_weights(tmp_path):
    from benchmarks.__main__ import main
    from benchmarks.runner import run_sweep
    out = tmp_path / "q"
    opts = {"ppl_en_tokens": 512, "ppl_zh_tokens": 128, "mc_items": 10}
    cfg = RunConfig(models=[SMOL, "random:tiny-llama"], variants=["bf16", "int8"], prompt_tokens=[16],
                    new_tokens=[4], repeats=1, warmup=0, device="cpu", overhead_check=False, out=str(out),
                    quality=True, quality_options=opts)
    messages = []
    rows = run_sweep(cfg, progress=lambda f, m: messages.append(m))
    assert len(rows) == 4 and all(r["status"] == "ok" for r in rows), [(r["variant"], r["error"]) for r in rows]
    real = {r["variant"]: r for r in rows if not r["random_weights"]}
    for r in real.values():
        assert r["quality_error"] is None, r["quality_error"]
        assert 1 < r["perplexity"] < 100 and math.isfinite(r["perplexity"])
        assert 1 < r["perplexity_zh"] < 1000 and 0 <= r["accuracy"] <= 1
        assert r["quality_tokens"] == 512 + 128 and r["quality_items"] == 10 and r["quality_s"] > 0
        assert r["raw"]["quality"]["mc_set"] == "arc_easy"
    assert real["int8"]["perplexity"] == pytest.approx(real["bf16"]["perplexity"], rel=0.05)
    assert real["int8"]["perplexity_zh"] == pytest.approx(real["bf16"]["perplexity_zh"], rel=0.05)
    assert real["int8"]["perplexity"] != real["bf16"]["perplexity"]       # really another model
    for r in (r for r in rows if r["random_weights"]):
        assert all(r[c] is None for c in QUALITY_COLUMNS)
        assert RANDOM_QUALITY_NOTE in r["raw"]["notes"]
    assert any("quality" in m for m in messages)
    with open(out / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert set(QUALITY_COLUMNS) <= set(table[0])
    assert {t["perplexity"] == "" for t in table} == {True, False}
    html = (out / "report.html").read_text()
    assert "Quality vs memory" in html and "have no quality numbers" in html and "ppl en" in html
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and "Quality vs memory" in (out / "report.html").read_text()


def test_benchmark_tab_checkbox_reaches_the_run_config(monkeypatch, tmp_path):
    """The Benchmark tab's ▶ Run event, as the page sends it (one value per input component, in the listener's
    input order, preprocessed and passed to the handler by gradio): the quality checkbox turns quality on in the
    sweep's RunConfig, and off when unchecked. The 'unload first' checkbox sits next to it with the opposite value
    each time, so inputs swapped in the wiring (or a handler reading the wrong position) fail here."""
    import asyncio
    import time

    import gradio as gr
    from gradio.state_holder import SessionState

    import benchmarks.runner
    from playground.manager import ModelManager
    from benchmarks import ui_tab as tab
    from playground.ui.app import build_app
    from ui_support import by_elem_id, ui_event

    manager = ModelManager(device="cpu")      # its own (empty) manager: 'unload first' must not touch the session's
    unloads = []
    monkeypatch.setattr(manager, "unload_all", lambda: unloads.append(True))
    app = build_app(manager)
    box = by_elem_id(app, "bench-quality")
    assert isinstance(box, gr.Checkbox) and box.value is False
    assert "Measure quality (perplexity + accuracy)" == box.label
    seen = []
    monkeypatch.setattr(benchmarks.runner, "run_sweep", lambda cfg, **kw: seen.append(cfg) or [])
    monkeypatch.setattr(tab, "RESULTS_ROOT", tmp_path)
    run = ui_event(app, "bench-run")
    for quality, unload in ((True, False), (False, True)):
        page = {"bench-models": [SMOL], "bench-variants": ["bf16"], "bench-bs": "1", "bench-prompt": "16",
                "bench-new": "4", "bench-repeats": 1, "bench-warmup": 0, "bench-device": "cpu", "bench-cap": 0,
                "bench-unload": unload, "bench-quality": quality}
        assert sorted(i.elem_id for i in run.inputs) == sorted(page)
        before = len(seen)
        out = asyncio.run(app.process_api(run, [page[i.elem_id] for i in run.inputs], state=SessionState(app)))
        job = tab.current_job()
        assert job is not None and job.out.startswith(str(tmp_path)), job
        assert "Results folder" in out["data"][0]              # the status line of the job it started
        deadline = time.monotonic() + 30
        while not job.done and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.done and job.error is None and len(seen) == before + 1, (job, seen)
        cfg = seen[-1]
        assert cfg.quality is quality, (quality, cfg)
        assert (cfg.models, cfg.variants, cfg.device) == ([SMOL], ["bf16"], "cpu")
        assert unloads == ([True] if not quality else []), unloads
    assert "perplexity" in tab.TABLE_COLS and "accuracy" in tab.TABLE_COLS
