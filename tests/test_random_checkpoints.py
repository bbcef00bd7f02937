"""Random 4-bit checkpoints of shapes too big to build in bf16 (issue #15: the Qwen2-72B shape on one GPU).

The bf16 weights of a 72B shape (145 GB) fit neither one H200, nor the GPU machine's RAM or disk. So a 4-bit run
(GPTQ, AWQ, nf4, fp4) of such a shape builds a *skeleton* (config, tokenizer, the 16-bit tensors a 4-bit checkpoint
keeps) and writes the 4-bit codes shard by shard from the shapes. These tests do that for a tiny shape, with tiny
shards."""
from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_a_skeleton_becomes_a_sharded_4bit_checkpoint_that_loads_and_runs(tmp_path, monkeypatch, method):
    import torch
    from safetensors import safe_open

    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path))
    from benchmarks.random_weights import ensure_random_model
    from playground import random_checkpoints
    from playground.manager import ModelManager

    skel, _ = ensure_random_model("tiny-llama", "cpu", skeleton=True)
    with safe_open(f"{skel}/model.safetensors", "pt") as st:
        keys = set(st.keys())
    assert "model.embed_tokens.weight" in keys and "lm_head.weight" in keys
    assert not any(".mlp." in k or ".self_attn." in k for k in keys)       # no decoder linear weights at all

    monkeypatch.setattr(random_checkpoints, "RANDOM_SHARD_BYTES", 64 << 10)          # 64 KB shards: many of them
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
    assert wants_skeleton("qwen2-72b", "nf4") and wants_skeleton("qwen2-72b", "fp4")
    assert not wants_skeleton("qwen2-72b", "int8")         # LLM.int8 quantizes bf16 weights while loading
    assert not wants_skeleton("mistral-7b", "gptq")        # 14.5 GB of bf16: built whole, as before
    monkeypatch.setenv("PLAYGROUND_SKELETON_ABOVE_GB", "0")
    assert wants_skeleton("tiny-llama", "gptq")


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_a_skeleton_becomes_a_prequantized_bitsandbytes_checkpoint(tmp_path, monkeypatch, quant_type):
    """nf4/fp4 of a skeleton: the codes are written in bitsandbytes' serialized layout (as ``save_pretrained``
    of a 4-bit model writes them) and load as Linear4bit layers without quantizing anything."""
    import bitsandbytes as bnb
    import torch

    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path))
    from benchmarks.random_weights import ensure_random_model
    from playground import random_checkpoints
    from playground.manager import ModelManager

    skel, _ = ensure_random_model("tiny-llama", "cpu", skeleton=True)
    assert random_checkpoints.is_skeleton(skel)
    monkeypatch.setattr(random_checkpoints, "RANDOM_SHARD_BYTES", 64 << 10)
    mm = ModelManager(device="cpu")
    lm = mm.get(skel, quant_type)
    (out,) = [p for p in (tmp_path / "quantized").glob(f"*-{quant_type}-*") if p.is_dir()]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 3
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "bitsandbytes" and config["bnb_4bit_quant_type"] == quant_type
    layers = [m for m in lm.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    n_linears = len(random_checkpoints.decoder_linears(lm.model))
    assert n_linears and len(layers) == n_linears        # every decoder linear is 4-bit, lm_head is not
    assert all(m.weight.quant_state.quant_type == quant_type for m in layers)
    q = layers[0]
    assert q.weight.dtype == torch.uint8 and q.weight.numel() * 2 == q.in_features * q.out_features
    dense = bnb.functional.dequantize_4bit(q.weight.data, q.weight.quant_state)
    assert dense.shape == (q.out_features, q.in_features)
    assert 0.005 < dense.float().std().item() < 0.05      # the init's spread, not noise of another scale
    with torch.no_grad():
        logits = lm.model(torch.tensor([[1, 5, 9, 13]])).logits
    assert torch.isfinite(logits).all() and logits.std() > 0
    assert lm.stats.quantize_s > 0 and any("random 4-bit codes" in n for n in lm.stats.notes)
    mm.unload_all()
