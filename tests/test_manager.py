"""Model manager: conversion cache, LRU eviction by memory budget, unloading that really frees memory."""
from __future__ import annotations

import gc

from conftest import DEFAULT_MODEL
from playground.catalog import converted_dir, resolve
from playground.manager import ModelManager
from playground.memory import rss_bytes

MB = 1024 ** 2


def test_conversion_is_cached_outside_the_repo():
    from pathlib import Path
    source = resolve(DEFAULT_MODEL)
    folder = converted_dir(DEFAULT_MODEL)
    assert Path(source.path) == folder and (folder / "config.json").exists()
    assert (folder / "tokenizer.json").exists() and (folder / "playground_source.json").exists()
    repo = Path(__file__).resolve().parents[1]
    assert repo not in folder.resolve().parents
    assert source.convert_s == 0.0


def test_same_request_returns_the_loaded_model(manager, smollm_bf16):
    assert manager.get(DEFAULT_MODEL, "bf16") is smollm_bf16


def test_unload_returns_the_memory():
    mm = ModelManager(device="cpu")
    gc.collect()
    before = rss_bytes()
    lm = mm.get(DEFAULT_MODEL, "fp32")
    weights = lm.stats.weights_bytes
    loaded = rss_bytes()
    assert loaded - before > 0.8 * weights, "loading fp32 should grow the process by about its weights"
    del lm
    assert mm.unload(DEFAULT_MODEL, "fp32")
    after = rss_bytes()
    assert loaded - after > 0.8 * weights, (
        f"unload gave back only {(loaded - after) / MB:.0f} MB of {weights / MB:.0f} MB of weights")
    assert mm.loaded() == []


def test_lru_eviction_under_budget():
    fp32_bytes = 538_060_288
    mm = ModelManager(device="cpu", budget_bytes=int(fp32_bytes * 1.6))
    a = mm.get(DEFAULT_MODEL, "fp32")
    b = mm.get(DEFAULT_MODEL, "bf16")          # 538 + 269 MB fits in 861 MB
    assert {m.variant for m in mm.loaded()} == {"fp32", "bf16"}
    mm.get(DEFAULT_MODEL, "bf16")               # touch bf16: fp32 becomes least recently used
    c = mm.get(DEFAULT_MODEL, "fp16")          # does not fit: fp32 (LRU) goes
    assert {m.variant for m in mm.loaded()} == {"bf16", "fp16"}
    assert any("fp32" in n for n in c.stats.notes), c.stats.notes
    assert a.model is None, "the evicted model's weights were released"
    assert b.model is not None
    mm.unload_all()


def test_budget_too_small_for_one_model_is_a_clear_error():
    import pytest
    from playground.errors import MemoryBudgetError
    mm = ModelManager(device="cpu", budget_bytes=10 * MB)
    with pytest.raises(MemoryBudgetError, match="memory budget is 0.01 GB"):
        mm.get(DEFAULT_MODEL, "bf16")


def test_weights_bytes_counts_bitsandbytes_quantization_state(manager):
    """nf4's absmax scales live on the weight's quant_state, not as parameters: they count, and double
    quantization (8-bit scales of the scales) makes them smaller."""
    from playground.manager import weights_bytes
    from playground.variants import VariantOptions
    plain = manager.get(DEFAULT_MODEL, "nf4")
    packed = sum(p.numel() * p.element_size() for p in plain.model.parameters())
    absmax = sum(m.weight.quant_state.absmax.numel() * m.weight.quant_state.absmax.element_size()
                 for m in plain.model.modules() if type(m).__name__ == "Linear4bit")
    assert absmax > 1e6 and weights_bytes(plain.model) >= packed + absmax
    double = manager.get(DEFAULT_MODEL, "nf4", options=VariantOptions(double_quant=True))
    assert weights_bytes(double.model) < weights_bytes(plain.model)
    manager.unload(DEFAULT_MODEL, "nf4")
