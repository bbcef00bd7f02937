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
