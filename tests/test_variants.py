"""Every variant is real: its Linear layers are the quantized kind, weight memory shrinks, and it still answers."""
from __future__ import annotations

import pytest
import torch

from conftest import DEFAULT_MODEL, FRANCE
from playground.engine import GenerationParams, chat
from playground.manager import quantized_layer_kinds
from playground.variants import VARIANTS

# Fraction of bf16 weight bytes each variant may use at most. Embeddings (tied with lm_head, 57 MB of the
# 269 MB) stay in 16 bits in every variant, which is why 4-bit lands near 0.4 and not 0.25.
MAX_FRACTION_OF_BF16 = {"fp32": 2.01, "bf16": 1.0, "fp16": 1.0, "int8": 0.65, "int8-wo": 0.65, "nf4": 0.45,
                        "fp4": 0.45, "gptq": 0.5, "awq": 0.5}
EXPECTED_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# transformer block projections of SmolLM2-135M: 30 layers × (q, k, v, o, gate, up, down)
BLOCK_LINEARS = 30 * 7


def test_registry_has_all_nine_variants():
    assert list(VARIANTS) == ["fp32", "bf16", "fp16", "int8", "int8-wo", "nf4", "fp4", "gptq", "awq"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_is_really_that_variant(manager, smollm_bf16, variant):
    lm = manager.get(DEFAULT_MODEL, variant)
    kinds = quantized_layer_kinds(lm.model)
    bf16_bytes = smollm_bf16.stats.weights_bytes
    assert lm.stats.weights_bytes <= MAX_FRACTION_OF_BF16[variant] * bf16_bytes, (variant, lm.stats, kinds)
    if variant in EXPECTED_DTYPE:
        dtypes = {p.dtype for p in lm.model.parameters()}
        assert dtypes == {EXPECTED_DTYPE[variant]}, dtypes
        # plain Linears of that dtype (the fast decoder's fused projections are Linears over views of them)
        plain = sum(1 for m in lm.model.modules()
                    if isinstance(m, torch.nn.Linear) and m.weight.dtype == EXPECTED_DTYPE[variant])
        assert plain >= BLOCK_LINEARS, kinds
    else:
        if variant in ("gptq", "awq"):
            from playground.gptq_awq import quantized_linears  # gptqmodel kernels share BaseQuantLinear
            qlayers = quantized_linears(lm.model)
            quantized = len(qlayers)
            assert all(hasattr(m, "qweight") and hasattr(m, "scales") for _, m in qlayers)
            assert {m.bits for _, m in qlayers} == {4}
        elif variant == "int8-wo":          # plain Linears whose weight is torchao's int8 tensor subclass
            from torchao.quantization import Int8Tensor
            quantized = sum(1 for m in lm.model.modules()
                            if isinstance(m, torch.nn.Linear) and isinstance(m.weight, Int8Tensor))
        else:
            wanted = VARIANTS[variant].quantized_layer_classes
            quantized = sum(n for cls, n in kinds.items() if any(cls.endswith(w) for w in wanted))
        assert quantized >= BLOCK_LINEARS, f"{variant}: only {quantized} quantized linears: {kinds}"
        assert lm.kernel, "the quantized kernel in use must be recorded"
        # the shrink must come from the block weights, not from dropping layers
        assert lm.stats.weights_bytes < 0.7 * bf16_bytes
    # and it still produces an answer
    text, stats = chat(lm, FRANCE, params=GenerationParams(greedy=True, max_new_tokens=12))
    assert text.strip(), f"{variant} produced an empty reply"
    assert stats.new_tokens > 0 and stats.ttft_s > 0 and stats.peak_mem_gb > 0
    if variant in ("fp32", "bf16", "fp16", "int8", "int8-wo"):
        assert "Paris" in text, (variant, text)


def test_quantized_cache_is_reused(manager):
    """gptq/awq checkpoints are made once; loading again reads the cache (quantize_s == 0)."""
    from playground.catalog import resolve
    from playground.variants import VariantOptions, get_variant
    source = resolve(DEFAULT_MODEL)
    assert source.convert_s == 0.0, "the converted folder must come from the cache"
    for name in ("gptq", "awq"):
        plan = get_variant(name).plan(source, VariantOptions(), "cpu", lambda f, m: None)
        assert plan.quantize_s == 0.0 and plan.quantized_cache
        meta = (__import__("pathlib").Path(plan.quantized_cache) / "playground_quantization.json")
        assert meta.exists(), "quantization settings and calibration time are recorded next to the checkpoint"


def test_quantized_cache_key_depends_on_settings():
    from playground.catalog import resolve
    from playground.variants import VariantOptions, quantized_cache_dir
    source = resolve(DEFAULT_MODEL)
    a = quantized_cache_dir(source, "gptq", VariantOptions())
    b = quantized_cache_dir(source, "gptq", VariantOptions(group_size=64))
    c = quantized_cache_dir(source, "awq", VariantOptions())
    assert len({a, b, c}) == 3


def test_auto_fast_decode_compiles_on_cuda_except_where_it_was_measured_slower():
    """int8's compiled decoder ran at 0.48x its eager tok/s on an H200 (results/gpu-h200-glm-6b-class-bs1): auto
    leaves int8 eager, and says why; "on" still compiles it; the CPU stays eager for every variant."""
    from playground.variants import VARIANTS, VariantOptions, fast_decode_by_default
    auto, on = VariantOptions(), VariantOptions(fast_decode="on")
    assert not auto.wants_fast_decode("cuda", "int8") and on.wants_fast_decode("cuda", "int8")
    assert [v for v in VARIANTS if not fast_decode_by_default(v, "cuda")] == ["int8"]
    assert all(auto.wants_fast_decode("cuda:0", v) for v in VARIANTS if v != "int8")
    assert not any(auto.wants_fast_decode("cpu", v) for v in VARIANTS)
    assert "0.48x" in VARIANTS["int8"].eager_note and "'on'" in VARIANTS["int8"].eager_note
