"""GPTQ/AWQ layers repacked for torch's int4 matmul (tinygemm): same function, same answers, all layers moved."""
from __future__ import annotations

import pytest

from conftest import DEFAULT_MODEL, FRANCE
from playground.int4_tinygemm import PATHS


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_repacked_layers_compute_what_the_original_layers_compute(manager, method):
    import torch

    from playground.engine import GenerationParams, chat
    from playground.gptq_awq import quantized_linears
    from playground.int4_tinygemm import TinyGemmInt4Linear, repack
    from playground.variants import VariantOptions

    plain = manager.get(DEFAULT_MODEL, method, options=VariantOptions(kernel="gptq_torch" if method == "gptq"
                                                                       else "torch_awq"))
    layers = quantized_linears(plain.model)
    torch.manual_seed(0)
    for name, layer in layers[:: max(1, len(layers) // 6)]:
        x = torch.randn(3, layer.in_features, dtype=torch.bfloat16)
        with torch.no_grad():
            want, got = layer(x).float(), repack(layer)(x).float()
        assert (got - want).norm() / want.norm() < 0.01, name          # bf16 rounding, not a wrong code
    manager.unload(DEFAULT_MODEL, method)

    lm = manager.get(DEFAULT_MODEL, method, options=VariantOptions(kernel="tinygemm"))
    try:
        tiny = [m for m in lm.model.modules() if isinstance(m, TinyGemmInt4Linear)]
        assert len(tiny) == len(layers) and not quantized_linears(lm.model)
        assert lm.kernel == f"TinyGemmInt4Linear ({PATHS})"
        text, _ = chat(lm, FRANCE, params=GenerationParams(max_new_tokens=12, greedy=True))
        assert "Paris" in text
    finally:
        manager.unload(DEFAULT_MODEL, method)


def test_awq_layers_are_read_a_slice_of_rows_at_a_time_not_through_their_kernel(manager, monkeypatch):
    """AWQ's torch kernel unpacks the whole weight into int32 temporaries on every call (1.97 GB above the weights
    while a GLM-6B-class model was repacked on an H200): the repack reads AWQ rows with the AWQ dequantizer on
    row slices instead, and gets exactly the weight the kernel computes with."""
    import torch

    from playground import int4_tinygemm
    from playground.gptq_awq import quantized_linears
    from playground.variants import VariantOptions

    lm = manager.get(DEFAULT_MODEL, "awq", options=VariantOptions(kernel="torch_awq"))
    try:
        name, layer = max(quantized_linears(lm.model), key=lambda nl: nl[1].out_features)
        k, n, g = layer.in_features, layer.out_features, layer.group_size
        by_slices = int4_tinygemm._awq_rows(layer, k, n, g)
        assert by_slices is not None, name
        through_kernel = int4_tinygemm._kernel_rows(layer, k)(0, k).float()
        if getattr(layer, "bias", None) is not None:
            through_kernel -= layer.bias.float()
        assert torch.equal(torch.cat([by_slices(r, min(k, r + g)) for r in range(0, k, g)]).float(), through_kernel)

        x = torch.randn(2, k, dtype=torch.bfloat16)
        with torch.no_grad():
            want = layer(x).float()
        monkeypatch.setattr(type(layer), "forward", lambda *a: (_ for _ in ()).throw(AssertionError("ran kernel")))
        with torch.no_grad():
            got = int4_tinygemm.repack(layer)(x).float()
        assert (got - want).norm() / want.norm() < 0.01
    finally:
        manager.unload(DEFAULT_MODEL, "awq")
    # the H200 case: GLM-6B's 4096 -> 27392 MLP layer is read 256 rows (7M weights) at a time
    assert int4_tinygemm._rows_per_block(27392, 128) * 27392 <= int4_tinygemm.ELEMENTS_PER_BLOCK
    assert int4_tinygemm._rows_per_block(1536, 128) == int4_tinygemm.ROWS_PER_BLOCK


def test_layers_tinygemm_cannot_take_are_refused_with_the_reason():
    import torch
    from torch import nn

    from playground.int4_tinygemm import unsupported_reason

    class Fake(nn.Module):
        def __init__(self, k, n, g, bits=4, act_order=False):
            super().__init__()
            self.in_features, self.out_features, self.group_size, self.bits = k, n, g, bits
            idx = torch.arange(k) // g
            self.g_idx = idx.flip(0) if act_order else idx
    assert unsupported_reason(Fake(256, 64, 128)) is None
    assert "3-bit" in unsupported_reason(Fake(256, 64, 128, bits=3))
    assert "group size" in unsupported_reason(Fake(256, 64, -1))
    assert "shape" in unsupported_reason(Fake(256, 60, 128))
    assert "act-order" in unsupported_reason(Fake(256, 64, 128, act_order=True))


@pytest.mark.parametrize("arch", ["tiny-llama", "tiny-neox"])
@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_random_weight_models_get_random_4bit_checkpoints_that_load_and_run(tmp_path, monkeypatch, method, arch):
    """Architecture-only models skip calibration: random codes of the real shapes, loaded like any checkpoint.
    tiny-neox is GLM-6B class's architecture (GPT-NeoX, ungated GELU MLP): its AWQ checkpoint must carry the
    activation scales AWQ divides by (without them the first token was NaN on an H200 and here)."""
    import torch

    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path))
    from benchmarks.random_weights import ensure_random_model
    from playground.manager import ModelManager
    from playground.variants import VariantOptions

    path, _ = ensure_random_model(arch, "cpu")
    mm = ModelManager(device="cpu")
    for kernel in (None, "tinygemm"):
        lm = mm.get(path, method, options=VariantOptions(kernel=kernel))
        assert any("random 4-bit codes" in n for n in lm.stats.notes)
        assert lm.stats.quantize_s < 30
        ids = torch.tensor([[1, 5, 9, 13]])
        with torch.no_grad():
            logits = lm.model(ids).logits
        assert torch.isfinite(logits).all() and logits.std() > 0
        if kernel:
            assert lm.kernel == f"TinyGemmInt4Linear ({PATHS})"
        scaled = [m for m in lm.model.modules() if type(m).__name__ == "ScaledActivation"]
        assert len(scaled) == (4 if (method, arch) == ("awq", "tiny-neox") else 0)
        assert all(torch.equal(m.scales, torch.ones_like(m.scales)) for m in scaled)
        mm.unload_all()


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_the_replaced_layers_hold_no_memory_after_the_repack(tmp_path, monkeypatch, method):
    """gptqmodel's GPTQ layers sit in reference cycles: after the repack they lived on until Python's next garbage
    collection, with their codes and the bf16 weight their kernel dequantized (on an H200, GLM-6B class: 2.7 GB
    more than AWQ during the first replies). Checked without collecting: what is left of them holds no tensor."""
    import gc

    import torch

    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path))
    from benchmarks.random_weights import ensure_random_model
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    from playground.manager import ModelManager
    from playground.variants import VariantOptions

    path, _ = ensure_random_model("tiny-llama", "cpu")
    mm = ModelManager(device="cpu")
    gc.collect()
    # only the layers this load replaces: whether other models' layers outlive their unload is
    # test_retention.py::test_gptqmodel_pool_threads_let_go_of_a_quantized_model's question
    before = {id(o) for o in gc.get_objects() if isinstance(o, BaseQuantLinear)}
    lm = mm.get(path, method, options=VariantOptions(kernel="tinygemm"))
    assert lm.kernel == f"TinyGemmInt4Linear ({PATHS})"

    def tensors(layer):
        values = list(layer._parameters.values()) + list(layer._buffers.values())
        for value in vars(layer).values():
            values += list(value.values()) if isinstance(value, dict) else [value]
        return [v for v in values if torch.is_tensor(v)]
    left = [o for o in gc.get_objects() if isinstance(o, BaseQuantLinear) and id(o) not in before]
    held = sum(t.numel() * t.element_size() for o in left for t in tensors(o))
    assert held == 0, f"{len(left)} replaced {method} layers still hold {held / 2**20:.1f} MB"
    mm.unload_all()


def test_awq_for_tinygemm_loads_in_bf16_even_where_transformers_would_pick_fp16(monkeypatch):
    """On CUDA transformers turns an AWQ load's bf16 into fp16; the tinygemm path computes in bf16 and had to cast
    the whole model back after the load. Checked with CUDA made to look available (the quantizer only looks at
    that)."""
    import torch
    from transformers.quantizers.quantizer_awq import AwqQuantizer

    from playground.gptq_awq import awq_loads_in
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    quantizer = AwqQuantizer.__new__(AwqQuantizer)
    assert quantizer.update_dtype(torch.bfloat16) == torch.float16          # what transformers does on CUDA
    with awq_loads_in("awq", torch.bfloat16):
        assert quantizer.update_dtype(torch.bfloat16) == torch.bfloat16
    with awq_loads_in("awq", None), awq_loads_in("gptq", torch.bfloat16):  # another kernel: its fp16 stays
        assert quantizer.update_dtype(torch.bfloat16) == torch.float16
    assert quantizer.update_dtype(torch.bfloat16) == torch.float16          # restored
