"""The deployment guides' published tables (benchmarks/references/*_guide.csv) beside a run, as ratios to fp16."""
from __future__ import annotations

import pytest

from benchmarks.published import gaps, guide_ratios, guides_html, load_guides, parse_range
from benchmarks.random_weights import list_architectures


def row(variant, vram, load=10.0, short=1.0, long=8.0, rss=2.0, model="random:glm-6b-class", **kw):
    r = {"model": model, "variant": variant, "status": "ok", "batch_size": 1, "decode_mode": "eager",
         "kv_cache": "default", "peak_gpu_nvml_gb": vram, "load_read_s": load, "e2e_short_s": short,
         "e2e_long_s": long, "peak_rss_gb": rss}
    r.update(kw)
    return r


def test_ranges_parse_as_published():
    assert parse_range("12-13") == (12.0, 13.0)
    assert parse_range("18.6") == (18.6, 18.6)
    assert parse_range("") is None


def test_every_guide_has_an_fp16_row_and_names_shapes_that_exist():
    guides = {g.name: g for g in load_guides()}
    assert {"chatglm6b_guide", "baichuan13b_guide"} <= set(guides)
    for g in guides.values():
        assert g.baseline()["vram_gb"] is not None
        assert g.applies_to and set(g.applies_to) <= set(list_architectures()), g.applies_to
    glm = guides["chatglm6b_guide"]
    int4 = next(r for r in glm.rows if r["variant"] == "int4")
    assert int4["vram_gb"] == (5.0, 5.0) and int4["load_s"] == (15.0, 20.0)
    assert set(int4["compare_with"]) == {"nf4", "fp4", "gptq", "awq"}


def test_ratios_use_the_midpoints_and_this_runs_own_fp16():
    glm = next(g for g in load_guides() if g.name == "chatglm6b_guide")
    rows = [row("fp16", 12.0, load=4.0), row("nf4", 6.0, load=2.0), row("int8", 7.2),
            row("nf4", 1.0, model="random:mistral-7b"),                       # another model: ignored
            row("gptq", 1.0, decode_mode="compiled + CUDA graphs")]           # fast rows: not the guide's setting
    entries = {e["variant"]: e for e in guide_ratios(glm, rows)}
    assert set(entries) == {"fp16", "nf4", "int8"}
    assert entries["nf4"]["published_vram_gb_ratio"] == pytest.approx(5 / 12.5)      # 5 GB over 12-13 GB
    assert entries["nf4"]["run_vram_gb_ratio"] == pytest.approx(0.5)
    assert entries["nf4"]["run_load_s_ratio"] == pytest.approx(0.5)
    assert entries["int8"]["published_vram_gb_ratio"] == pytest.approx(8 / 12.5)
    far = {(v, m) for v, m, _, _ in gaps(list(entries.values()))}
    assert ("nf4", "vram_gb") in far            # 0.50 vs 0.40: 25% off
    assert ("int8", "vram_gb") not in far       # 0.60 vs 0.64: within 15%


def test_bf16_is_the_baseline_when_the_run_has_no_fp16():
    glm = next(g for g in load_guides() if g.name == "chatglm6b_guide")
    entries = guide_ratios(glm, [row("bf16", 12.0), row("awq", 4.8)])
    assert [e["variant"] for e in entries] == ["awq"]
    assert entries[0]["baseline"] == "bf16" and entries[0]["run_vram_gb_ratio"] == pytest.approx(0.4)


def test_the_report_shows_a_guide_only_for_its_shape():
    html = guides_html([row("fp16", 26.0, model="random:baichuan-13b-class"),
                        row("nf4", 9.25, model="random:baichuan-13b-class")])
    assert "Baichuan-13B" in html and "ChatGLM" not in html
    assert "11.5" in html and "0.356" in html                  # published 11.5 GB; ours 9.25 / 26
    assert guides_html([row("fp16", 26.0, model="random:mistral-7b")]) == ""
