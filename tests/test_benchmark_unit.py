"""Benchmark pieces that need no model: config validation, CLI errors, results files, report, bundle."""
from __future__ import annotations

import json
import zipfile

import pytest

from benchmarks.__main__ import main
from benchmarks.config import ConfigError, RunConfig
from benchmarks.results import (ResultsError, compare, e2e_for, load_results, new_row, percentile,
                                write_results)


def _cfg(**kw):
    base = dict(models=["smollm2-135m-instruct"], variants=["bf16"], prompt_tokens=[8], new_tokens=[4])
    return RunConfig(**dict(base, **kw))


@pytest.mark.parametrize("kw, words", [
    (dict(variants=["bf16", "int3"]), "unknown variant"),
    (dict(variants=["bf16", "bf16"]), "listed twice"),
    (dict(batch_sizes=[0]), "out of range"),
    (dict(prompt_tokens=["abc"]), "not an integer"),
    (dict(new_tokens=[100000]), "out of range"),
    (dict(repeats=0), "repeats must be"),
    (dict(device="tpu"), "device must be"),
    (dict(memory_cap_gb=-1), "memory_cap_gb"),
    (dict(models=[]), "models"),
    (dict(models=["random:no-such-arch"]), "known architectures"),
    (dict(variant_options={"bits": 5}), "variant_options"),
])
def test_config_rejects_with_clear_message(kw, words):
    with pytest.raises(ConfigError, match=words):
        _cfg(**kw)


def test_config_random_weights_prefix_and_round_trip():
    cfg = _cfg(models=["tiny-llama"], random_weights=True, batch_sizes="1", prompt_tokens=["16", 32])
    assert cfg.models == ["random:tiny-llama"] and cfg.batch_sizes == [1] and cfg.prompt_tokens == [16, 32]
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.units() == 1 * 1 * (1 + 2)


@pytest.mark.parametrize("argv, words", [
    (["run", "--model", "x", "--variants", "bogus"], "unknown variant"),
    (["run", "--model", "smollm2-135m-instruct", "--repeats", "zero"], "invalid int value"),
    (["run", "--variants", "bf16"], "required"),
    (["run", "--model", "smollm2-135m-instruct", "--device", "cuda:x"], "device must be"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_bad_arguments_exit_nonzero_with_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as exc:
        rc = main(argv)
        raise SystemExit(rc)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_percentiles_and_answer_times():
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([], 90) is None
    t, extrapolated = e2e_for(0.5, [0.1] * 40, 32)
    assert t == pytest.approx(0.5 + 3.1) and not extrapolated
    t, extrapolated = e2e_for(0.5, [0.1] * 7, 32)
    assert t == pytest.approx(0.5 + 3.1) and extrapolated


def _fake_results(tmp_path, name, scale=1.0, random=False):
    rows = []
    for v, tok, mem in (("fp16", 10.0, 1.0), ("nf4", 8.0, 0.4), ("gptq", 9.0, 0.45)):
        model = "random:tiny-llama" if random else "smollm2-135m-instruct"
        r = new_row(model, v, "cpu", 1, 32, 8, repeats=2, ttft_ms=50.0, decode_tok_s=tok * scale, itl_p50_ms=100.0,
                    e2e_s=1.0, e2e_short_s=3.0, e2e_long_s=25.0, peak_rss_gb=mem, weights_gb=mem / 2,
                    load_read_s=1.0, load_s=1.0, harness_overhead=0.01)
        r["raw"].update(ttft_ms=[49.0, 51.0], decode_tok_s=[tok * scale] * 2)
        rows.append(r)
    rows.append(new_row("smollm2-135m-instruct", "awq", "cpu", 1, 32, 8, status="oom", error="MemoryError: x"))
    out = tmp_path / name
    write_results(out, {"config": _cfg(out=str(out)).to_dict(), "environment": {"device": "cpu"}, "rows": rows,
                        "finished": "now"})
    return out


def test_report_compare_and_bundle(tmp_path, capsys):
    from benchmarks.bundle import make_zip
    a = _fake_results(tmp_path, "a")
    b = _fake_results(tmp_path, "b", scale=2.0, random=False)
    assert main(["report", str(a)]) == 0
    html = (a / "report.html").read_text()
    for text in ("variant", "RAM (peak RSS)", "VRAM", "short answer", "long answer", "optimum-benchmark",
                 "plotly", "oom"):
        assert text in html, text
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "decode_tok_s" in out and "2" in out
    ratios = compare(load_results(a), load_results(b))
    assert all(r["decode_tok_s"] == pytest.approx(2.0) for r in ratios if r["decode_tok_s"] is not None)
    z = make_zip(a)
    assert sorted(n.split("/")[-1] for n in zipfile.ZipFile(z).namelist()) == \
        ["report.html", "results.csv", "results.json"]


def test_reports_side_by_side_share_one_plotly_script(tmp_path):
    """``report --plotly-js FILE``: the page loads plotly from FILE by a relative address (written once, the
    same bytes as the inline script) and is small; without it the page stays self-contained."""
    from plotly.offline import get_plotlyjs
    inline = _fake_results(tmp_path, "inline")
    assert main(["report", str(inline)]) == 0
    full = (inline / "report.html").read_text()
    assert get_plotlyjs()[:2000] in full and len(full) > 4_000_000
    nested = tmp_path / "deep" / "er"
    nested.mkdir(parents=True)
    a, b = _fake_results(tmp_path, "a"), _fake_results(nested, "b")
    js = tmp_path / "plotly.min.js"
    for folder, src in ((a, "../plotly.min.js"), (b, "../../../plotly.min.js")):
        assert main(["report", str(folder), "--plotly-js", str(js)]) == 0
        page = (folder / "report.html").read_text()
        assert f'<script src="{src}"></script>' in page and len(page) < 500_000, len(page)
        assert (folder / src).resolve() == js.resolve()
        assert 'class="plotly-graph-div"' in page           # the figures themselves are still there
    assert js.read_text() == get_plotlyjs()
    js.write_text("stale")                                   # another plotly's copy is replaced, not trusted
    assert main(["report", str(a), "--plotly-js", str(js)]) == 0
    assert js.read_text() == get_plotlyjs()


def test_random_rows_are_marked_in_report(tmp_path):
    from benchmarks.report import write_report
    out = _fake_results(tmp_path, "r", random=True)
    html = write_report(out).read_text()
    assert "random:tiny-llama [random weights]" in html and "random weights</b>" in html


def test_corrupt_results_give_clear_errors(tmp_path, capsys):
    good = _fake_results(tmp_path, "good")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text('{"config": {}, "rows": [{"model": "x", ')
    with pytest.raises(ResultsError, match="corrupt"):
        load_results(bad)
    assert main(["report", str(bad)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "corrupt" in err and len(err.splitlines()) == 1
    (bad / "results.json").write_text(json.dumps({"rows": "nope"}))
    with pytest.raises(ResultsError, match="not a benchmark results file"):
        load_results(bad)
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "missing")


def test_worker_classifies_memory_errors():
    from benchmarks.worker import classify
    from playground.errors import ModelNotFoundError, VariantUnsupportedError
    assert classify(MemoryError()) == "oom"
    assert classify(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes")) == "oom"
    try:
        try:
            raise OSError(12, "Cannot allocate memory")
        except OSError as inner:
            raise ModelNotFoundError("x is not in the local Hugging Face cache") from inner
    except ModelNotFoundError as wrapped:
        assert classify(wrapped) == "oom"
    assert classify(VariantUnsupportedError("needs CUDA")) == "unsupported"
    assert classify(ValueError("bad")) == "error"


def test_resume_keeps_a_row_per_decode_mode_and_kv_setting():
    from benchmarks.config import RunConfig
    from benchmarks.runner import resume_plan
    cfg = RunConfig(models=["smollm2-135m-instruct"], variants=["bf16"], decode_modes=["eager", "fast"],
                    device="cpu")
    base = dict(model="smollm2-135m-instruct", variant="bf16", device="cpu", batch_size=1, prompt_tokens=512,
                new_tokens=256, status="ok")
    rows = [dict(base, decode_mode="eager"), dict(base, decode_mode="compiled (inductor)"),
            dict(base, decode_mode="eager", kv_cache="int4"), dict(base, decode_mode="eager")]
    keep, done = resume_plan({"config": cfg.to_dict(), "rows": rows}, cfg, "cpu")
    assert keep == rows[:3] and len(done) == 1


def test_resume_measures_again_a_combo_stopped_between_its_decode_modes():
    """A run killed after a combo's eager row and before its fast row: the combo is measured again (both rows),
    not left without its fast row."""
    from benchmarks.config import RunConfig
    from benchmarks.runner import resume_plan
    cfg = RunConfig(models=["m"], variants=["bf16", "nf4"], decode_modes=["eager", "fast"], device="cpu")
    base = dict(model="m", device="cpu", batch_size=1, prompt_tokens=512, new_tokens=256, status="ok")
    rows = [dict(base, variant="bf16", decode_mode="eager"), dict(base, variant="bf16", decode_mode="compiled"),
            dict(base, variant="nf4", decode_mode="eager")]
    keep, done = resume_plan({"config": cfg.to_dict(), "rows": rows}, cfg, "cpu")
    assert keep == rows[:2]
    assert done == {("m", "bf16", "cpu", 1, 512, 256)}


def test_reference_overlay_ratios_to_fp16_beside_the_published_ones():
    from benchmarks.plots import reference_ratios
    from benchmarks.report import reference_table

    def row(variant, tok_s, mem, p=512, n=1000):
        return new_row("random:mistral-7b", variant, "cuda", 1, p, n, decode_tok_s=tok_s, peak_gpu_mem_gb=mem)
    rows = [row("fp16", 40.0, 16.0), row("fp4", 30.0, 6.0), row("gptq", 44.0, 5.0), row("bf16", 41.0, 16.0)]
    ratios, note = reference_ratios(rows)
    by = {r["variant"]: r for r in ratios}
    # published (optimum-benchmark, A100, bs 1): bnb 4-bit 23.0 / 35.3 tok/s and 7,960 / 17,066 MB of fp16's
    assert by["fp4"]["ref_tok_s_ratio"] == pytest.approx(23.0 / 35.3)
    assert by["fp4"]["ref_mem_ratio"] == pytest.approx(7960 / 17066)
    assert by["gptq"]["ref_tok_s_ratio"] == pytest.approx(31.7 / 35.3) and by["fp16"]["ref_tok_s_ratio"] == 1
    # this run's own, to its own fp16
    assert by["fp4"]["run_tok_s_ratio"] == pytest.approx(0.75) and by["fp4"]["run_mem_ratio"] == pytest.approx(6 / 16)
    assert by["gptq"]["run_tok_s_ratio"] == pytest.approx(1.1) and by["awq"]["run_tok_s_ratio"] is None
    assert all(r["baseline"] == "fp16" for r in ratios)
    assert "decode tok/s" in note and "peak_gpu_mem_gb" in note and "batch 1, prompt 512" not in note.split(";")[0]
    # another setting, and no fp16 row: both said
    ratios, note = reference_ratios([row("bf16", 40.0, 16.0, p=128, n=64), row("nf4", 20.0, 5.0, p=128, n=64)])
    assert {r["baseline"] for r in ratios} == {"bf16"}
    assert "ratios are to bf16" in note and "prompt 128, 64 new tokens" in note and "prompt 512, 1000" in note
    assert "ratios are to bf16" in reference_table([row("bf16", 40.0, 16.0, p=128, n=64)])


def test_nested_and_overlapping_gpu_peak_trackers_keep_their_own_peaks(monkeypatch):
    """The allocator has one peak per process and every tracker resets it: a reply's tracker inside a load-and-reply
    tracker wiped the load's peak (the H200 GPU test read 4.10 GB for an AWQ load that peaked at 5.70). Driven
    through a fake CUDA allocator: this machine has no GPU."""
    import torch

    from playground.memory import PeakMemory

    class Allocator:
        allocated = peak = 0

        def use(self, nbytes):
            self.allocated += nbytes
            self.peak = max(self.peak, self.allocated)

        def reset(self, device=None):
            self.peak = self.allocated
    gpu = Allocator()
    for name, fn in {"is_available": lambda: True, "init": lambda: None, "device_count": lambda: 1,
                     "max_memory_allocated": lambda i=0: gpu.peak, "max_memory_reserved": lambda i=0: gpu.peak,
                     "reset_peak_memory_stats": gpu.reset}.items():
        monkeypatch.setattr(torch.cuda, name, fn)

    with PeakMemory("cuda") as outer:
        gpu.use(6 << 30)          # the load's temporaries
        gpu.use(-2 << 30)
        with PeakMemory("cuda") as reply:
            gpu.use(1 << 30)
            gpu.use(-1 << 30)
        other = PeakMemory("cuda").__enter__()   # a second chat slot starts while the first is still open
        gpu.use(3 << 30)
        gpu.use(-3 << 30)
        other.__exit__(None, None, None)
    assert reply.peak_bytes == 5 << 30
    assert other.peak_bytes == 7 << 30
    assert outer.peak_bytes == 7 << 30 and outer.peak_reserved_bytes == 7 << 30
    with PeakMemory("cuda") as after:
        pass
    assert after.peak_bytes == 4 << 30                      # only what is held now
