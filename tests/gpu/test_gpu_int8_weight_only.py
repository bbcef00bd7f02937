"""int8-wo on CUDA (issue #19): torchao's int8 weight-only weights stay close to bf16 and decode through the fast
decoder (compiled step, CUDA graphs), with the compiled and eager replies agreeing. Random weights of the
TinyLlama-1.1B shape; the tok/s of both are printed (-rP) as a first reading, not a claim."""
from __future__ import annotations

import os
import re

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SHAPE = os.environ.get("PLAYGROUND_GPU_TEST_SHAPE", "tinyllama-1.1b")


def test_int8_weight_only_matches_bf16_and_decodes_compiled_on_cuda():
    from benchmarks.random_weights import ensure_random_model
    from playground.engine import GenerationParams, chat
    from playground.manager import ModelManager
    from playground.variants import VariantOptions

    path = ensure_random_model(SHAPE, "cuda")[0]
    mm = ModelManager(device="cuda", budget_bytes=1 << 62)
    ref = mm.get(path, "bf16", options=VariantOptions(fast_decode="off"))
    lm = mm.get(path, "int8-wo", options=VariantOptions(fast_decode="on"))
    assert lm.kernel == "Int8Tensor (torchao)"
    assert 0.45 < lm.stats.weights_bytes / ref.stats.weights_bytes < 0.65
    ids = torch.randint(100, 30000, (1, 64), device="cuda")
    with torch.no_grad():
        got, want = lm.model(ids).logits.float(), ref.model(ids).logits.float()
    rel = ((got - want).norm() / want.norm()).item()
    print(f"int8-wo vs bf16 logits on CUDA: relative L2 {rel:.4f}")
    assert torch.isfinite(got).all() and rel < 0.10
    msgs = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}]
    n = 48
    fast_text, fast = chat(lm, msgs, None, GenerationParams(max_new_tokens=n, min_new_tokens=n, greedy=True))
    eager_text, eager = chat(lm, msgs, None, GenerationParams(max_new_tokens=n, min_new_tokens=n, greedy=True,
                                                                decode="eager"))
    print(f"int8-wo decode: compiled {fast.decode_tok_s:.1f} tok/s ({fast.decode_mode}), eager "
          f"{eager.decode_tok_s:.1f} tok/s; compile {lm.fast.info.warmup_s:.1f} s")
    assert fast.decode_mode.startswith("compiled"), (fast.decode_mode, fast.notes)
    assert eager.decode_mode == "eager" and fast.new_tokens == eager.new_tokens == n
    # the random model's words are "<w123>" tokens with no spaces between them: compare tokens, not str.split()
    fast_words, eager_words = (re.findall(r"<w\d+>|\w+|\S", t) for t in (fast_text, eager_text))
    same = sum(1 for a, b in zip(fast_words, eager_words) if a == b) / max(1, len(eager_words))
    assert same > 0.5, (fast_text[:200], eager_text[:200])     # greedy: the same tokens, bar bf16 rounding ties
    mm.unload_all()
