"""Fused q/k/v and gate/up projections on CUDA (issue #19): the compiled step (inductor + CUDA graphs) over the fused
products against the unfused model run eagerly, in bf16, teacher-forced over the same tokens, and against the
unfused compiled step over the same tokens; the fusion adds no allocated memory. Random weights of the
TinyLlama-1.1B shape (``PLAYGROUND_GPU_TEST_SHAPE``); the tok/s of the fused and unfused compiled steps are printed
(-rP) as a first reading, not a claim."""
from __future__ import annotations

import os
import time

import pytest

import playground  # noqa: F401 - tests/conftest.py calls playground.process_setup() before CUDA starts
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SHAPE = os.environ.get("PLAYGROUND_GPU_TEST_SHAPE", "tinyllama-1.1b")
MB = 1024 ** 2


def _decode(fd, prompt: torch.Tensor, steps: int, forced: list[int] | None = None
            ) -> tuple[list[torch.Tensor], list[int], float]:
    """Logits of the prefill and of ``steps`` compiled steps, the tokens fed, and the steps' tok/s (the first step,
    which compiles and records the graph, left out of the timing). ``forced``: feed these tokens (teacher forcing)
    instead of each step's own greedy choice, so two decoders are compared over the same inputs: with random
    weights the top two logits are often a rounding apart, and one flipped token sends a free-running greedy
    decode down another path (0.88 of 49 tokens agreed at 8765f47 while every step matched within 3%)."""
    cache = fd.acquire(1, prompt.shape[1] + steps + 1)
    try:
        with torch.no_grad():
            logits = [fd.prefill(prompt, cache).float()]
            tokens = [forced[0] if forced else int(logits[0].argmax())]
            t0 = None
            for i in range(steps):
                if i == 1:
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                nxt = torch.tensor([[tokens[-1]]], device=prompt.device)
                logits.append(fd.step(nxt, cache).float())
                tokens.append(forced[i + 1] if forced else int(logits[-1].argmax()))
            torch.cuda.synchronize()
            rate = (steps - 1) / (time.perf_counter() - t0)
    finally:
        fd.release(cache)
    return logits, tokens, rate


def test_fused_compiled_step_matches_the_unfused_model_on_cuda():
    from benchmarks.random_weights import ensure_random_model
    from playground.fast_decode import FastDecoder
    from playground.manager import ModelManager
    from playground.variants import VariantOptions

    path = ensure_random_model(SHAPE, "cuda")[0]
    mm = ModelManager(device="cuda", budget_bytes=1 << 62)
    lm = mm.get(path, "bf16", options=VariantOptions(fast_decode="off"))
    model = lm.model
    prompt = torch.randint(100, 30000, (1, 64), device="cuda")
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    fused = FastDecoder(model, "cuda")
    torch.cuda.synchronize()
    grown = (torch.cuda.memory_allocated() - before) / MB
    assert fused.info.mode == "compiled + CUDA graphs, fused qkv+gate/up", fused.info
    assert abs(grown) < 4, f"fusing changed the allocated memory by {grown:.1f} MB"   # views of the same bytes

    steps = 48
    logits, tokens, fused_rate = _decode(fused, prompt, steps)
    assert fused.compiles == 1
    # the unfused model, eagerly, over the same tokens: the logits of every position at once
    full = torch.cat([prompt, torch.tensor([tokens[:-1]], device="cuda")], dim=1)
    with torch.no_grad():
        want = model(full).logits[0, prompt.shape[1] - 1:].float()
    got = torch.cat(logits)
    rel = ((got - want).norm(dim=-1) / want.norm(dim=-1))
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    print(f"fused compiled vs unfused eager, bf16: relative L2 per position max {rel.max():.4f} "
          f"(median {rel.median():.4f}), top-1 agreement {agree:.2f}")
    assert rel.max() < 0.05 and agree >= 0.9

    unfused = FastDecoder(model, "cuda", fuse=False)
    assert unfused.info.mode == "compiled + CUDA graphs"
    unfused_logits, _, unfused_rate = _decode(unfused, prompt, steps, forced=tokens)
    other = torch.cat(unfused_logits)
    rel2 = ((got - other).norm(dim=-1) / other.norm(dim=-1))
    agree2 = (got.argmax(-1) == other.argmax(-1)).float().mean().item()
    print(f"compiled step tok/s, {SHAPE} bf16 batch 1: fused {fused_rate:.1f}, unfused {unfused_rate:.1f} "
          f"(a first reading, the GPU shared with other tests); fused vs unfused compiled, same tokens: relative "
          f"L2 max {rel2.max():.4f}, top-1 agreement {agree2:.2f}")
    assert rel2.max() < 0.05 and agree2 >= 0.9
    mm.unload_all()
