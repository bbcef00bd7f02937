"""Fast decoding (static KV cache + compiled decode step): same tokens as eager, no recompiles within a bucket."""
from __future__ import annotations

import pytest

from conftest import DEFAULT_MODEL, FRANCE

LONGER = [{"role": "user", "content": "Name three rivers of Europe and say one thing about each."}]


def _greedy(lm, messages, n, decode):
    from playground.engine import GenerationParams, stream_reply
    last = None
    for last in stream_reply(lm, messages, None, GenerationParams(max_new_tokens=n, min_new_tokens=n, greedy=True,
                                                                  decode=decode)):
        pass
    return last.text, last.stats


def _ids(lm, text):
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_bucket_lengths():
    from playground.fast_decode import bucket_length
    assert bucket_length(1) == 1024 and bucket_length(1024) == 1024 and bucket_length(1025) == 2048
    assert bucket_length(100, min_bucket=128) == 128 and bucket_length(129, min_bucket=128) == 256
    assert bucket_length(3000, context=2048) == 3000      # the engine refuses such a prompt earlier
    assert bucket_length(1500, context=2048) == 2048


def test_fast_mode_matches_eager_tokens_and_does_not_recompile_within_a_bucket(manager):
    """The real thing on CPU: inductor-compiled decode step over a StaticCache, warmed up at load."""
    from playground.variants import VariantOptions
    # fp32: in bf16, inductor's fused kernels round differently from eager ones and greedy paths drift apart
    lm = manager.get(DEFAULT_MODEL, "fp32", options=VariantOptions(fast_decode="on"))
    try:
        assert lm.fast is not None, lm.stats.notes
        # inductor, full graph, with the q/k/v and gate/up projections fused (on by default where they apply)
        assert lm.fast.info.mode == "compiled (inductor), fused qkv+gate/up" and lm.stats.warmup_s > 0
        assert any("fast decode: compiled" in n for n in lm.stats.notes)
        compiles_after_warmup = lm.fast.compiles
        assert compiles_after_warmup == 1

        eager_text, eager_stats = _greedy(lm, FRANCE, 24, "eager")
        fast_text, fast_stats = _greedy(lm, FRANCE, 24, "fast")
        assert eager_stats.decode_mode == "eager" and fast_stats.decode_mode == lm.fast.info.mode
        assert fast_text == eager_text and "Paris" in fast_text
        assert fast_stats.new_tokens == eager_stats.new_tokens == 24

        # another max_new_tokens and another prompt, same 128-token bucket: the compiled step is reused
        fast30, _ = _greedy(lm, FRANCE, 30, "fast")
        eager30, _ = _greedy(lm, FRANCE, 30, "eager")
        assert fast30 == eager30
        fast_l, _ = _greedy(lm, LONGER, 20, "fast")
        eager_l, _ = _greedy(lm, LONGER, 20, "eager")
        assert fast_l == eager_l
        assert lm.fast.compiles == compiles_after_warmup
    finally:
        manager.unload(DEFAULT_MODEL, "fp32")


def test_a_new_bucket_compiles_once_and_old_buckets_stay_compiled(smollm_bf16):
    """Recompiles are decided by dynamo's guards, whatever the backend: counted here with dynamo + eager backend."""
    import torch

    from playground.fast_decode import FastDecoder
    lm = smollm_bf16
    fd = FastDecoder(lm.model, "cpu", backend="eager")
    prompt = _ids(lm, "The capital of France is")

    def run(needed, steps):
        cache = fd.acquire(1, needed)
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

    a = run(40, 6)
    assert fd.compiles == 1
    b = run(100, 12)                       # same 128 bucket, other length
    assert fd.compiles == 1 and b[:7] == a
    c = run(200, 6)                        # 256 bucket: one new graph
    assert fd.compiles == 2 and c == a
    run(60, 4)                             # back to 128: still compiled
    run(250, 4)
    assert fd.compiles == 2


def test_cpu_default_is_eager_and_says_so(smollm_bf16):
    assert smollm_bf16.fast is None
    assert any("fast decode" in n and "eager decoding here" in n for n in smollm_bf16.stats.notes)
    _, stats = _greedy(smollm_bf16, FRANCE, 4, "auto")
    assert stats.decode_mode == "eager"


def test_busy_fast_decoder_falls_back_to_eager_for_a_concurrent_reply(smollm_bf16):
    from playground.fast_decode import FastDecoder
    lm = smollm_bf16
    lm.fast = FastDecoder(lm.model, "cpu", backend="eager")
    try:
        held = lm.fast.acquire(1, 60, lm.context_length)   # another reply holds the 128 bucket
        text, stats = _greedy(lm, FRANCE, 8, "fast")
        assert stats.decode_mode == "eager" and any("busy" in n for n in stats.notes)
        lm.fast.release(held)
        text2, stats2 = _greedy(lm, FRANCE, 8, "fast")
        assert stats2.decode_mode.startswith("compiled") and text2 == text
    finally:
        lm.fast = None


@pytest.mark.gpu
def test_fast_mode_on_cuda_is_faster_than_eager_with_the_same_tokens():
    from playground.manager import ModelManager
    mm = ModelManager(device="cuda")
    lm = mm.get(DEFAULT_MODEL, "bf16")
    assert lm.fast is not None and lm.fast.info.mode == "compiled + CUDA graphs, fused qkv+gate/up", lm.stats.notes
    _greedy(lm, FRANCE, 64, "fast")
    e_text, e = _greedy(lm, FRANCE, 64, "eager")
    f_text, f = _greedy(lm, FRANCE, 64, "fast")
    assert f_text == e_text
    assert f.decode_tok_s > 1.5 * e.decode_tok_s, (f.decode_tok_s, e.decode_tok_s)
    mm.unload_all()


def test_sliding_window_models_do_not_recompile_at_every_token():
    """Mistral-style configs (sliding_window set): transformers' sliding cache layers count positions in a Python
    int, which a compiled step is specialised on. Within the window the cache is built with full layers instead."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from playground.fast_decode import FastDecoder, FastDecodeUnsupported
    cfg = AutoConfig.for_model("mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=256, sliding_window=256,
                               max_position_embeddings=4096)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    fd = FastDecoder(model, "cpu", backend="eager")
    prompt = torch.randint(0, 256, (1, 12))
    cache = fd.acquire(1, 40)
    with torch.no_grad():
        nxt = fd.prefill(prompt, cache).argmax(-1, keepdim=True)
        fast = [int(nxt)]
        for _ in range(10):
            nxt = fd.step(nxt, cache).argmax(-1, keepdim=True)
            fast.append(int(nxt))
        fd.release(cache)
        assert fd.compiles == 1
        past, x, eager = None, prompt, []
        for _ in range(11):
            out = model(input_ids=x, past_key_values=past, use_cache=True)
            past, x = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            eager.append(int(x))
    assert fast == eager
    with pytest.raises(FastDecodeUnsupported, match="window 256"):
        fd.acquire(1, 300)


def _tiny_windowed_model():
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model("mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, vocab_size=256, sliding_window=256,
                               max_position_embeddings=4096)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_session_hands_out_the_cache_and_gives_it_back_however_the_block_ends():
    """``FastDecoder.session(needed)``: a cache while the block runs, released after it (an error in the reply
    included); a second session on a held cache, or a length the decoder cannot take, decodes eagerly with a note,
    and the decoder stays usable."""
    import torch

    from playground.fast_decode import BUSY_NOTE, FastDecoder
    fd = FastDecoder(_tiny_windowed_model(), "cpu", backend="eager")
    prompt = torch.randint(0, 256, (1, 12))
    with fd.session(40) as s:
        assert s.fast and s.cache is not None and s.note == "" and s.mode == fd.info.mode
        with fd.session(40) as busy:                 # the same bucket, held by the reply above
            assert not busy.fast and busy.cache is None and busy.note == BUSY_NOTE and busy.mode == "eager"
        with torch.no_grad():
            first = s.prefill(prompt).argmax(-1, keepdim=True)
            s.step(first)
    with pytest.raises(RuntimeError, match="the reply's own error"):
        with fd.session(40) as s:
            raise RuntimeError("the reply's own error")
    with fd.session(300) as long:                    # past the 256-token window: cannot be fast
        assert not long.fast and "window 256" in long.note and long.mode == "eager"
    with fd.session(40) as again:                    # released by both blocks above: free again
        assert again.fast
        with torch.no_grad():
            assert int(again.prefill(prompt).argmax(-1, keepdim=True)) == int(first)
    assert fd.compiles == 1


def test_a_session_that_cannot_fit_falls_back_without_chaining_its_reason_into_the_replys_errors():
    from playground.fast_decode import FastDecoder
    fd = FastDecoder(_tiny_windowed_model(), "cpu", backend="eager")
    with pytest.raises(ValueError) as caught:
        with fd.session(300):
            raise ValueError("boom")
    assert caught.value.__context__ is None      # the refused length is a note, not part of the reply's error


def test_reply_session_decides_per_reply_and_starts_the_decoder_only_when_asked(smollm_bf16, monkeypatch):
    import playground.fast_decode as fd_mod
    import playground.manager as manager_mod
    from playground.fast_decode import NOT_STARTED_NOTE, reply_session
    assert manager_mod.enable_fast_decode is not None and manager_mod.forget_compiled_graphs is not None
    lm = smollm_bf16
    assert lm.fast is None
    started = []

    def refuse(lm_, compile=True):       # stands for a decoder that fails to start
        started.append(lm_)
        return None
    monkeypatch.setattr(fd_mod, "enable_fast_decode", refuse)
    with reply_session(lm, 64, "eager") as s:
        assert not s.fast and s.note == ""
    with reply_session(lm, 64, "auto") as s:          # CPU default: eager, nothing to say
        assert not s.fast and s.note == ""
    with reply_session(lm, 64, "fast", "int4") as s:  # a quantized KV cache never starts the decoder
        assert not s.fast and "kv_cache=int4" in s.note
    assert started == []
    with reply_session(lm, 64, "fast") as s:
        assert not s.fast and s.note == NOT_STARTED_NOTE
    assert started == [lm] and lm.fast is None


def test_the_benchmarks_batched_loop_holds_its_cache_through_a_session():
    """``benchmarks.generation.batched_greedy`` with the fast decoder: the same tokens as its eager loop, the cache
    held through ``FastDecoder.session`` and given back afterwards; a cache in use or a length the decoder cannot
    take is an error (a measurement never turns eager quietly)."""
    import torch

    from benchmarks.generation import batched_greedy
    from playground.fast_decode import FastDecoder, FastDecodeUnsupported

    class Count:
        n = 0

        def token(self, synced=False):
            self.n += 1
    model = _tiny_windowed_model()
    fd = FastDecoder(model, "cpu", backend="eager")
    prompts = torch.randint(0, 256, (2, 12)).tolist()
    eager = batched_greedy(model, prompts, 8, [3], Count())
    tracker = Count()
    assert batched_greedy(model, prompts, 8, [3], tracker, fast=fd) == eager and tracker.n == 8
    assert fd._busy == set()                                 # given back
    with fd.session(20, batch=2):                             # the same bucket, held elsewhere
        with pytest.raises(RuntimeError, match="cache for this batch is busy"):
            batched_greedy(model, prompts, 8, [3], Count(), fast=fd)
    with pytest.raises(FastDecodeUnsupported, match="window 256"):
        batched_greedy(model, [prompts[0] * 25], 8, [3], Count(), fast=fd)     # 300 + 8 positions
    assert fd._busy == set() and batched_greedy(model, prompts, 8, [3], Count(), fast=fd) == eager


def test_greedy_choice_inside_the_compiled_step_gives_the_same_tokens(smollm_bf16):
    """The benchmark's fast loop chooses each token inside the compiled graph (argmax, stop tokens masked): the
    same tokens as choosing them on the host from the same decoder's logits (batch 1 and 2), and as eager decoding
    at batch 1 (at batch 2 bf16's static and dynamic caches round apart); one graph per batch size (the logits and
    the greedy choice of the same step), reused."""
    import torch

    from benchmarks.generation import batched_greedy, make_prompt_ids, stop_token_ids
    from playground.fast_decode import FastDecoder
    lm = smollm_bf16
    fd = FastDecoder(lm.model, "cpu", backend="eager")

    class Null:
        def token(self, synced=False):
            pass
    stop = stop_token_ids(lm.model, lm.tokenizer)
    assert stop

    def from_logits(prompts, n):
        with fd.session(len(prompts[0]) + n, batch=len(prompts)) as s, torch.no_grad():
            logits = s.prefill(torch.tensor(prompts))
            out = []
            for i in range(n):
                if i:
                    logits = s.step(out[-1])
                logits[:, stop] = -float("inf")
                out.append(logits.argmax(-1, keepdim=True))
        return torch.cat(out, 1).tolist()
    for batch in (1, 2):
        prompts = make_prompt_ids(lm.tokenizer, 20, batch)
        fast = batched_greedy(lm.model, prompts, 16, stop, Null(), fast=fd)
        assert fast == from_logits(prompts, 16), batch
        assert not any(t in stop for row in fast for t in row)
        if batch == 1:
            assert fast == batched_greedy(lm.model, prompts, 16, stop, Null())
    compiled = fd.compiles
    assert compiled == 2                       # one graph per batch size: logits and the greedy choice together
    batched_greedy(lm.model, make_prompt_ids(lm.tokenizer, 30, 1), 12, stop, Null(), fast=fd)
    assert fd.compiles == compiled             # another length in the bucket: no recompile
