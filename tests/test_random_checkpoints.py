"""Random 4-bit checkpoints of shapes too big to build in bf16 (issue #15: the Qwen2-72B shape on one GPU).

The bf16 weights of a 72B shape (145 GB) fit neither one H200, nor the GPU machine's RAM or disk. So a GPTQ/AWQ
run of such a shape builds a *skeleton* (config, tokenizer, the 16-bit tensors a 4-bit checkpoint keeps) and writes
the 4-bit codes shard by shard from the shapes. These tests do that for a tiny shape, with tiny shards."""
from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_a_skeleton_becomes_a_sharded_4bit_checkpoint_that_loads_and_runs(tmp_path, monkeypatch, method):
    import torch
    from safetensors import safe_open

    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path))
    from benchmarks.random_weights import ensure_random_model
    from playground import gptq_awq
    from playground.manager import ModelManager

    skel, _ = ensure_random_model("tiny-llama", "cpu", skeleton=True)
    with safe_open(f"{skel}/model.safetensors", "pt") as st:
        keys = set(st.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" in keys
    assert not any(".mlp." in k or ".self_attn." in k for k in keys)       # no decoder linear weights at all

    monkeypatch.setattr(gptq_awq, "RANDOM_SHARD_BYTES", 64 << 10)          # 64 KB shards: many of them
    mm = ModelManager(device="cpu")
    lm = mm.get(skel, method)
    (out,) = [p for p in (tmp_path / "quantized").glob(f"*-{method}-*") if p.is_dir()]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 3 and set(index["weight_map"].values()) == set(shards)
    assert not (out / "model.safetensors").exists()
    for name in shards:          # each shard within its bound, unless it is one tensor larger than that
        n_keys = sum(1 for v in index["weight_map"].values() if v == name)
        assert n_keys == 1 or (out / name).stat().st_size < (64 << 10) + 4096, name
    assert any(k.endswith(".qweight") for k in index["weight_map"]) and "lm_head.weight" in index["weight_map"]
    with torch.no_grad():
        logits = lm.model(torch.tensor([[1, 5, 9, 13]])).logits
    assert torch.isfinite(logits).all() and logits.std() > 0
    mm.unload_all()


def test_only_big_shapes_in_gptq_or_awq_get_a_skeleton(monkeypatch):
    from benchmarks.random_weights import wants_skeleton

    assert wants_skeleton("qwen2-72b", "gptq") and wants_skeleton("qwen2-72b", "awq")
    assert not wants_skeleton("qwen2-72b", "nf4")          # bitsandbytes quantizes bf16 weights: needs them
    assert not wants_skeleton("mistral-7b", "gptq")        # 14.5 GB of bf16: built whole, as before
    monkeypatch.setenv("PLAYGROUND_SKELETON_ABOVE_GB", "0")
    assert wants_skeleton("tiny-llama", "gptq")
