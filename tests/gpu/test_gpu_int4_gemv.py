"""The Triton int4 GEMV on CUDA (issue #19, ``playground/int4_gemv.py``): for the Mistral-7B shape's four products
it gives tinygemm's result from tinygemm's own packed weights after its per-shape tuning; a GPTQ model (random codes,
TinyLlama-1.1B shape) loads with it (kernel triton-gemv), decodes through it inside the compiled step replayed as
CUDA graphs (no compile after the warm-up), and its teacher-forced step logits match the model's full forward
(dequantize + bf16 matmul). The microseconds (in CUDA graphs) and GB/s of both kernels are printed (-rP)."""
from __future__ import annotations

import os

import pytest

import playground  # noqa: F401 - tests/conftest.py calls playground.process_setup() before CUDA starts
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SHAPE = os.environ.get("PLAYGROUND_GPU_TEST_SHAPE", "tinyllama-1.1b")
from benchmarks.experiments.device.probe_gemv import MISTRAL_PRODUCTS  # noqa: E402 - after the CUDA setup import


def _us(fn) -> float:
    """Microseconds a call inside a CUDA graph (the GPU's time, not Python's launch), as the probe times it."""
    from benchmarks.experiments.device.probe_gemv import graph_us
    return graph_us(fn, replays=100)


@pytest.mark.parametrize("name,k,n", MISTRAL_PRODUCTS)
def test_gemv_gives_tinygemms_product_on_cuda(name, k, n):
    from playground import int4_gemv
    from playground.int4_tinygemm import from_codes
    g = 128
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randint(0, 16, (k, n), dtype=torch.uint8, device="cuda", generator=gen)
    scales = torch.rand(k // g, n, device="cuda", generator=gen) * 0.02 + 0.001
    lo = torch.randint(-8, -3, (k // g, n), device="cuda", generator=gen).float()
    layer = from_codes(q, scales, lo, g)
    assert int4_gemv.unsupported_reason(layer.packed, g, k, n) is None
    config = int4_gemv.tune(layer.packed, layer.scales_and_zeros, g)
    x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        tiny = torch.ops.aten._weight_int4pack_mm(x, layer.packed, g, layer.scales_and_zeros).float()
        layer.gemv = config
        y = layer(x)
        assert y.shape == (1, n) and y.dtype == torch.bfloat16
        rel = ((y.float() - tiny).norm() / tiny.norm()).item()
        gemv_us = _us(lambda: layer(x))
        tiny_us = _us(lambda: torch.ops.aten._weight_int4pack_mm(x, layer.packed, g, layer.scales_and_zeros))
        two = torch.randn(2, k, dtype=torch.bfloat16, device="cuda")        # more than one row: tinygemm
        assert torch.equal(layer(two), torch.ops.aten._weight_int4pack_mm(two, layer.packed, g,
                                                                          layer.scales_and_zeros))
    read = layer.packed.numel() * 4 + layer.scales_and_zeros.numel() * 2
    print(f"{name} {k}->{n}: config {config}; GEMV {gemv_us:.1f} us ({read / gemv_us / 1e3:.0f} GB/s), tinygemm "
          f"{tiny_us:.1f} us ({read / tiny_us / 1e3:.0f} GB/s), x{tiny_us / gemv_us:.2f} (a first reading); "
          f"relative L2 {rel:.5f}")
    assert rel < 0.01


@pytest.mark.parametrize("launch", ["op", "direct", "tinygemm"])
def test_gptq_model_decodes_through_the_gemv_in_cuda_graphs(launch, monkeypatch):
    """``launch``: through the custom op (opaque to inductor), or the kernel launched in the traced code (dynamo's
    user-Triton-kernel support: inductor emits the launch itself); "tinygemm": the default kernel, no GEMV, through
    the same 24 teacher-forced steps. At c1d225b (H100) op and direct gave the same logits: 23 of 24 steps within
    0.0087 of the full forward, and step 20 (position 52) compiled a second graph whose step was wrong (1.9985):
    the recompile, not the launch, is the bug; the "tinygemm" case says whether it is the GEMV's. The print gives
    the compile count after each step, the mode and any fallback reason; recompile reasons go to the log."""
    from benchmarks.random_weights import ensure_random_model
    from playground import int4_gemv
    from playground.int4_tinygemm import GEMV_PATH, TinyGemmInt4Linear
    gemv = launch != "tinygemm"
    if gemv:
        monkeypatch.setattr(int4_gemv, "LAUNCH", launch)
    torch._logging.set_logs(recompiles=True)
    from playground.manager import ModelManager
    from playground.variants import VariantOptions

    path = ensure_random_model(SHAPE, "cuda")[0]
    mm = ModelManager(device="cuda", budget_bytes=1 << 62)
    try:
        lm = mm.get(path, "gptq", options=VariantOptions(fast_decode="on",
                                                         kernel="triton-gemv" if gemv else "tinygemm"))
        assert (GEMV_PATH in lm.kernel) == gemv, lm.kernel
        layers = [m for m in lm.model.modules() if isinstance(m, TinyGemmInt4Linear)]
        assert layers and all((m.gemv is not None) == gemv for m in layers)
        fd = lm.fast
        assert fd is not None and fd.info.mode == "compiled + CUDA graphs", (fd.info.mode, lm.stats.notes)
        compiled = fd.compiles
        gen = torch.Generator(device="cuda").manual_seed(1)
        prompt = torch.randint(100, 30000, (1, 32), device="cuda", generator=gen)
        forced = torch.randint(100, 30000, (1, 24), device="cuda", generator=gen)
        with torch.no_grad():
            full = lm.model(torch.cat([prompt, forced], 1)).logits.float()[0]   # 56 rows: dequantize + matmul
            cache = fd.acquire(1, prompt.shape[1] + forced.shape[1])
            try:
                fd.prefill(prompt, cache)
                steps, counts = [], []
                for i in range(forced.shape[1]):
                    steps.append(fd.step(forced[:, i:i + 1], cache).float()[0])
                    counts.append(fd.compiles)
            finally:
                fd.release(cache)
        rels = [((s - full[prompt.shape[1] + i]).norm() / full[prompt.shape[1] + i].norm()).item()
                for i, s in enumerate(steps)]
        print(f"{SHAPE} gptq, compiled step through the GEMV ({launch}) vs the full forward: relative L2 per step "
              f"{[round(r, 4) for r in rels]}; compiles after each step {counts}; mode {fd.info.mode!r}; fallback "
              f"{fd.info.fallback_reason!r}; kernel {lm.kernel}")
        assert fd.compiles == compiled, "no recompile after the warm-up"
        assert all(torch.isfinite(s).all() for s in steps) and max(rels) < 0.05
    finally:
        mm.unload_all()
