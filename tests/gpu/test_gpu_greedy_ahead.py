"""Greedy replies one step ahead on CUDA (issue #19, ``engine.GreedyAhead``, ``fast_decode.QueuedStep``): the token
chosen inside the compiled step (inductor + CUDA graphs) is the argmax of the same step's logits; a reply queued one
step ahead (the next replay launched before the token is read from pinned memory) gives exactly the tokens of the
same compiled step driven one synchronous step at a time, whose argmax is read on the host; a -inf bias bans a
token on the device. Random weights of the TinyLlama-1.1B shape (``PLAYGROUND_GPU_TEST_SHAPE``), bf16. The
tok/s of both loops is printed (-rP) as a first reading, not a claim."""
from __future__ import annotations

import os

import pytest

import playground  # noqa: F401 - tests/conftest.py calls playground.process_setup() before CUDA starts
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SHAPE = os.environ.get("PLAYGROUND_GPU_TEST_SHAPE", "tinyllama-1.1b")
PROMPT = "the quick brown fox jumps over the lazy dog"


def test_queued_greedy_reply_gives_the_tokens_of_synchronous_steps_on_cuda():
    from benchmarks.random_weights import ensure_random_model
    from playground.engine import GenerationParams, _stop_ids, build_prompt, stream_reply
    from playground.manager import ModelManager
    from playground.variants import VariantOptions

    path = ensure_random_model(SHAPE, "cuda")[0]
    mm = ModelManager(device="cuda", budget_bytes=1 << 62)
    try:
        lm = mm.get(path, "bf16", options=VariantOptions(fast_decode="on"))
        fd = lm.fast
        assert fd is not None and fd.info.mode.startswith("compiled + CUDA graphs"), lm.stats.notes
        n = 64
        messages = [{"role": "user", "content": PROMPT}]

        # the reply, queued one step ahead: the token ids it read, and whether each queued step had a bias
        from playground import fast_decode
        queued, read_ids = [], []
        real_queue, real_read = fast_decode.FastDecoder.queue_greedy, fast_decode.QueuedStep.read

        def queue_greedy(self, ids, cache, bias=None):
            queued.append(bias is not None)
            return real_queue(self, ids, cache, bias)

        def read(self):
            out = real_read(self)
            read_ids.extend(out[0])
            return out
        fast_decode.FastDecoder.queue_greedy, fast_decode.QueuedStep.read = queue_greedy, read
        try:
            last = None
            for last in stream_reply(lm, messages, None,
                                     GenerationParams(greedy=True, max_new_tokens=n, min_new_tokens=n)):
                pass
        finally:
            fast_decode.FastDecoder.queue_greedy, fast_decode.QueuedStep.read = real_queue, real_read
        stats = last.stats
        assert stats.decode_mode.startswith("compiled") and stats.new_tokens == n, (stats.decode_mode, stats.notes)
        assert len(queued) == n - 1 and all(queued), "every token after the prefill's came from a queued step, " \
                                                     "stop tokens banned (min_new_tokens = n)"
        assert len(read_ids) == n - 1

        # the same compiled step, one synchronous step at a time, the argmax of its (biased) logits read on the host
        prompt_ids = build_prompt(lm, messages, None)[0]
        ids = torch.tensor([prompt_ids], device="cuda")
        bias = fd.bias(sorted(_stop_ids(lm)))
        cache = fd.acquire(1, len(prompt_ids) + n)
        tokens, chosen_ok = [], True
        try:
            with torch.no_grad():
                nxt = (fd.prefill(ids, cache).float() + bias).argmax(-1, keepdim=True)
                tokens.append(int(nxt))
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                for i in range(n - 1):
                    if i == 1:
                        start.record()
                    logits, chosen, top = fd._run_step(nxt, cache, bias)
                    biased = logits.float() + bias
                    want = int(biased.argmax())
                    chosen_ok &= int(chosen) == want and float(top) == float(biased.max())
                    nxt = chosen
                    tokens.append(want)
                end.record()
                torch.cuda.synchronize()
                sync_rate = (n - 2) / (start.elapsed_time(end) / 1000)
        finally:
            fd.release(cache)
        assert chosen_ok, "the token chosen inside the graph is the argmax of the same step's logits"
        assert read_ids == tokens[1:], (read_ids[:16], tokens[1:17])
        print(f"{SHAPE} bf16, {n} tokens: reply queued ahead {stats.decode_tok_s:.1f} tok/s (engine, text and "
              f"streaming included); synchronous steps with a host argmax {sync_rate:.1f} tok/s (device time of the "
              f"steps only); the GPU is shared with other tests")

        # a -inf bias bans the step's own greedy choice: another token wins, on the device
        cache = fd.acquire(1, len(prompt_ids) + 2)
        try:
            with torch.no_grad():
                nxt = fd.prefill(ids, cache).argmax(-1, keepdim=True)
                free = fd.queue_greedy(nxt, cache)
                (free_id,), _ = free.read()
        finally:
            fd.release(cache)
        cache = fd.acquire(1, len(prompt_ids) + 2)
        try:
            with torch.no_grad():
                nxt = fd.prefill(ids, cache).argmax(-1, keepdim=True)
                banned = fd.queue_greedy(nxt, cache, fd.bias([free_id]))
                (banned_id,), (top,) = banned.read()
        finally:
            fd.release(cache)
        assert banned_id != free_id and top == top and top != float("-inf")
        assert fd.compiles == 1, "one graph serves logits, greedy steps and biased steps"
    finally:
        mm.unload_all()
