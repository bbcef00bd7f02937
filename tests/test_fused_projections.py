"""Fused q/k/v and gate/up projections (issue #19): one product per group inside the fast decoder, the same logits
and greedy tokens as the unfused model, no extra memory, no recompile within a bucket, memory back on unload."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch import nn

from conftest import DEFAULT_MODEL, FRANCE


def _tiny(model_type: str = "llama", **extra):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model(model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
                               max_position_embeddings=512, **extra)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


class _CountProducts(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the matrix products the model runs (aten mm/addmm/bmm)."""

    def __init__(self):
        super().__init__()
        self.products = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm,
                                   torch.ops.aten.linear):
            self.products += 1
        return func(*args, **(kwargs or {}))


def _storages(model) -> dict[int, int]:
    return {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_fused_views_hold_the_same_bytes_and_give_the_same_logits(model_type):
    from playground.fused_projections import FusedLinearPart, fuse_projections
    from playground.manager import weights_bytes
    model = _tiny(model_type)
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        want = model(ids).logits
    before_bytes, before_storage = weights_bytes(model), sum(_storages(model).values())
    q = model.model.layers[0].self_attn.q_proj
    old_q = weakref.ref(q.weight)
    fusion = fuse_projections(model)
    gc.collect()
    assert fusion.counts == {"qkv": 2, "gate/up": 2} and fusion.label == "fused qkv+gate/up"
    assert old_q() is None                                        # the original weight is freed, not kept
    assert weights_bytes(model) == before_bytes
    assert sum(_storages(model).values()) == before_storage       # the views share one storage per group
    attn = model.model.layers[0].self_attn
    parts = [attn.q_proj, attn.k_proj, attn.v_proj]
    assert all(isinstance(p, FusedLinearPart) for p in parts)
    assert len({p.weight.untyped_storage().data_ptr() for p in parts}) == 1
    if model_type == "qwen2":                                      # q/k/v with a bias: fused too
        assert all(p.bias is not None for p in parts)
        assert len({p.bias.untyped_storage().data_ptr() for p in parts}) == 1
    assert fuse_projections(model) is fusion                      # idempotent

    with torch.no_grad(), _CountProducts() as off:
        plain = model(ids).logits
    fusion.switch.on = True
    try:
        with torch.no_grad(), _CountProducts() as on:
            fused = model(ids).logits
    finally:
        fusion.switch.on = False
    assert torch.equal(plain, want)                               # switch off: exactly the model as loaded
    assert (fused - want).abs().max() <= 1e-5 * want.abs().max()
    # per layer 7 products become 4 (qkv, o, gate/up, down), plus the head; attention adds the same to both
    assert off.products - on.products == 2 * 3, (off.products, on.products)
    assert all(g.x is None and g.y is None for g in {p.shared for p in model.modules()
                                                    if isinstance(p, FusedLinearPart)})   # nothing kept alive


def test_a_part_fed_another_tensor_computes_its_own_slice():
    """Cross-attention-like use: k/v get a different input than q, so the shared product must not be handed on."""
    from playground.fused_projections import fuse_projections

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.k_proj, self.v_proj = nn.Linear(8, 6), nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x, other):
            return torch.cat([self.q_proj(x), self.k_proj(other), self.v_proj(x)], -1)
    torch.manual_seed(0)
    m = Attn()
    x, other = torch.randn(3, 8), torch.randn(3, 8)
    want = m(x, other)
    fusion = fuse_projections(m)
    fusion.switch.on = True
    got = m(x, other)
    assert torch.allclose(got, want, atol=1e-6)


def test_quantized_or_subclassed_linears_are_left_alone():
    from playground.fused_projections import fuse_projections

    class QuantLinear(nn.Linear):                 # bitsandbytes' and others' layers are nn.Linear subclasses
        pass
    model = _tiny()
    attn = model.model.layers[0].self_attn
    attn.k_proj = QuantLinear(attn.k_proj.in_features, attn.k_proj.out_features, bias=False)
    fusion = fuse_projections(model)
    assert fusion.counts == {"qkv": 1, "gate/up": 2}
    assert type(attn.q_proj) is nn.Linear and any("QuantLinear" in s for s in fusion.skipped)


def _greedy_steps(fd, prompt: list[int], steps: int) -> list[int]:
    cache = fd.acquire(1, len(prompt) + steps + 1)
    try:
        with torch.no_grad():
            nxt = fd.prefill(torch.tensor([prompt]), cache).argmax(-1, keepdim=True)
            out = [int(nxt)]
            for _ in range(steps):
                nxt = fd.step(nxt, cache).argmax(-1, keepdim=True)
                out.append(int(nxt))
    finally:
        fd.release(cache)
    return out


def test_smollm2_fused_decoder_gives_the_unfused_tokens_without_recompiling(smollm_bf16):
    """The real model (SmolLM2-135M, bf16): logits within 1e-3 of the unfused model, 20 greedy steps identical,
    two replies of different lengths in one bucket through one compiled (dynamo) graph."""
    from playground.fast_decode import FastDecoder
    lm = smollm_bf16
    prompt = lm.tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    unfused = FastDecoder(lm.model, "cpu", backend="eager", fuse=False)
    want = _greedy_steps(unfused, prompt, 20)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        ref = lm.model(ids).logits.float()
    fd = FastDecoder(lm.model, "cpu", backend="eager")
    assert fd.info.fused == "fused qkv+gate/up" and fd.info.mode == "compiled (eager), fused qkv+gate/up"
    assert unfused.info.fused == "" and "fused" not in unfused.info.mode
    fd.fusion.switch.on = True
    try:
        with torch.no_grad():
            fused = lm.model(ids).logits.float()
    finally:
        fd.fusion.switch.on = False
    assert ((fused - ref).norm() / ref.norm()).item() < 1e-3
    assert _greedy_steps(fd, prompt, 20) == want
    assert fd.compiles == 1
    longer = lm.tokenizer("Name three rivers of Europe and one thing about each.", add_special_tokens=False)
    _greedy_steps(fd, longer["input_ids"], 30)                # another length, the same 128 bucket
    assert fd.compiles == 1
    assert _greedy_steps(unfused, prompt, 20) == want            # the unfused decoder still runs the plain path
    assert not fd.fusion.switch.on


def test_unloading_a_model_with_a_fused_decoder_frees_it(manager):
    from playground.engine import GenerationParams, chat
    from playground.fast_decode import FastDecoder
    from playground.variants import VariantOptions
    lm = manager.get(DEFAULT_MODEL, "fp32", options=VariantOptions(fast_decode="off"))
    lm.fast = FastDecoder(lm.model, "cpu", backend="eager")
    text, stats = chat(lm, FRANCE, None, GenerationParams(max_new_tokens=8, greedy=True, decode="fast"))
    assert "fused qkv+gate/up" in stats.decode_mode and stats.new_tokens > 0
    ref = weakref.ref(lm.model)
    del lm
    manager.unload(DEFAULT_MODEL, "fp32")
    gc.collect()
    assert ref() is None and manager.unreturned == []
