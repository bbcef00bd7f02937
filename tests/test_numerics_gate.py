"""Every variant computes what bf16 computes, as closely as its bit width allows, and the suite can tell when it
does not: the numerics gate (tests/numerics_support.py) on both real-weight models, and the same gate run over
each quantized variant with its kernel broken on purpose (output features permuted), which it must fail."""
from __future__ import annotations

import pytest

from conftest import DEFAULT_MODEL
from numerics_support import baseline, broken_kernel, numerics_gate, quantization_kind, quantized_modules

QUANTIZED = ["int8", "nf4", "fp4", "gptq", "awq"]
GEMMA = "gemma3-270m"


@pytest.fixture(scope="module")
def smollm_baseline(manager):
    return baseline(manager.get(DEFAULT_MODEL, "bf16"))


@pytest.fixture(scope="module")
def gemma_baseline(manager):
    lm = manager.get(GEMMA, "bf16")
    return baseline(lm)


@pytest.mark.parametrize("variant", ["fp32", "fp16"] + QUANTIZED)
def test_smollm2_variant_passes_the_numerics_gate(manager, smollm_baseline, variant):
    result = numerics_gate(manager.get(DEFAULT_MODEL, variant), smollm_baseline)
    print(f"\n{DEFAULT_MODEL} {variant}: ppl {result.ppl:.2f} ({result.ppl_ratio:.3f}x bf16), "
          f"next-token agreement {result.agreement:.2f}, layers {result.kind}")
    assert result.passed, result.failures


@pytest.mark.parametrize("variant", ["fp32"] + QUANTIZED)
def test_gemma3_variant_passes_the_numerics_gate(manager, gemma_baseline, variant):
    result = numerics_gate(manager.get(GEMMA, variant), gemma_baseline)
    print(f"\n{GEMMA} {variant}: ppl {result.ppl:.2f} ({result.ppl_ratio:.3f}x bf16), "
          f"next-token agreement {result.agreement:.2f}, layers {result.kind}")
    manager.unload(GEMMA, variant)
    assert result.passed, result.failures


def test_gemma3_fp16_fails_the_gate_with_its_known_overflow(manager, gemma_baseline):
    """Gemma 3 overflows in fp16 (its catalog entry says so): the gate must not let NaN through."""
    result = numerics_gate(manager.get(GEMMA, "fp16"), gemma_baseline)
    manager.unload(GEMMA, "fp16")
    assert not result.passed and not result.ppl_ratio <= 10, result          # NaN or inf ppl: no ratio passes
    assert any("perplexity" in f for f in result.failures), result.failures


@pytest.mark.parametrize("variant", QUANTIZED)
def test_a_broken_kernel_fails_the_numerics_gate(manager, smollm_baseline, variant):
    """The mutation test: the suite proves it would notice a broken kernel in every quantized variant."""
    lm = manager.get(DEFAULT_MODEL, variant)
    with broken_kernel(lm.model) as n:
        assert n >= 30 * 7, f"only {n} quantized layers broken"
        result = numerics_gate(lm, smollm_baseline)
    print(f"\nbroken {variant}: ppl {result.ppl:.1f} ({result.ppl_ratio:.1f}x), agreement {result.agreement:.2f}")
    assert not result.passed
    assert any("perplexity" in f for f in result.failures), result.failures
    assert all(not m._forward_hooks for m in quantized_modules(lm.model)), "the breakage outlived the test"


def test_nf4_and_fp4_are_told_apart_by_their_quant_type(manager, smollm_baseline):
    """Swapping the two 4-bit formats would pass a check of the layer class alone."""
    import dataclasses
    nf4, fp4 = manager.get(DEFAULT_MODEL, "nf4"), manager.get(DEFAULT_MODEL, "fp4")
    assert quantization_kind(nf4) == "nf4" and quantization_kind(fp4) == "fp4"
    assert len(quantized_modules(nf4.model)) == len(quantized_modules(fp4.model)) >= 30 * 7
    swapped = numerics_gate(dataclasses.replace(nf4, variant="fp4"), smollm_baseline)   # nf4 layers called fp4
    assert any("the layers are 'nf4', not 'fp4'" in f for f in swapped.failures), swapped.failures
