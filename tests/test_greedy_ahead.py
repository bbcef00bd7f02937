"""Greedy replies through the fast decoder run one step ahead of the host (``engine.GreedyAhead``): step n + 1 is
queued before token n is read, the token is chosen inside the compiled step (stop tokens banned by a -inf bias
before ``min_new_tokens``), NaN logits still end the reply with the NaN message, and the text is the eager one.
On the CPU with dynamo's eager backend (the same traced step as inductor's, without its compile time)."""
from __future__ import annotations

import math

import pytest

from conftest import FRANCE


@pytest.fixture()
def fast_lm(smollm_bf16):
    """The shared bf16 SmolLM2 with a FastDecoder of its own for the test (the CPU default is eager)."""
    from playground.fast_decode import FastDecoder
    lm = smollm_bf16
    assert lm.fast is None
    lm.fast = FastDecoder(lm.model, "cpu", backend="eager", fuse=False)
    try:
        yield lm
    finally:
        lm.fast = None


def _reply(lm, decode, **params):
    from playground.engine import GenerationParams, stream_reply
    last = None
    for last in stream_reply(lm, FRANCE, None, GenerationParams(greedy=True, decode=decode, **params)):
        pass
    return last.text, last.stats


def _record(monkeypatch, log):
    """Log each queued step (with whether a bias was passed) and each read, in order."""
    from playground import fast_decode
    queue, read = fast_decode.FastDecoder.queue_greedy, fast_decode.QueuedStep.read

    def queue_greedy(self, ids, cache, bias=None):
        step = queue(self, ids, cache, bias)
        step.n = sum(1 for e in log if e[0] == "queue") + 1
        log.append(("queue", step.n, bias is not None))
        return step

    def read_step(self):
        log.append(("read", self.n))
        return read(self)
    monkeypatch.setattr(fast_decode.FastDecoder, "queue_greedy", queue_greedy)
    monkeypatch.setattr(fast_decode.QueuedStep, "read", read_step)


def test_each_step_is_queued_before_the_previous_token_is_read_and_the_text_is_the_eager_one(fast_lm,
                                                                                            monkeypatch):
    log = []
    _record(monkeypatch, log)
    n = 12
    fast_text, fast = _reply(fast_lm, "fast", max_new_tokens=n, min_new_tokens=n)
    eager_text, eager = _reply(fast_lm, "eager", max_new_tokens=n, min_new_tokens=n)
    assert fast.decode_mode.startswith("compiled") and eager.decode_mode == "eager"
    assert fast.new_tokens == eager.new_tokens == n and fast_text == eager_text
    # token 0 comes from the prefill; steps 1..n-1 are queued, each before the token of the one before is read
    want = [("queue", 1, True)]
    for k in range(1, n):
        if k + 1 < n:
            want.append(("queue", k + 1, True))
        want.append(("read", k))
    assert log == want


def test_stop_tokens_are_banned_only_before_min_new_tokens(fast_lm, monkeypatch):
    from playground.engine import _stop_ids
    log = []
    _record(monkeypatch, log)
    text, stats = _reply(fast_lm, "fast", max_new_tokens=40, min_new_tokens=4)
    banned = [has_bias for kind, step, *rest in log if kind == "queue" for has_bias in rest]
    assert banned[:3] == [True, True, True] and not any(banned[3:])      # steps 1-3 banned, 4 on free
    # the model ends its answer by itself: the stop token is read, the reply ends there, as eagerly
    eager_text, eager = _reply(fast_lm, "eager", max_new_tokens=40, min_new_tokens=4)
    assert stats.finish_reason == eager.finish_reason == "eos" and text == eager_text and "Paris" in text
    assert stats.new_tokens == eager.new_tokens < 40 and _stop_ids(fast_lm)
    # the stop token (not counted in new_tokens) was read after the step behind it had been queued: one step of
    # wasted work, in a cache that is reset before its next use
    assert sum(1 for e in log if e[0] == "queue") == stats.new_tokens + 1


def test_nan_logits_in_a_queued_step_end_the_reply_with_the_nan_message(fast_lm):
    """NaN from the first decode step on (a hook on the input embeddings for one-token inputs): the prefill's token
    is fine, the greedy step's chosen logit is NaN and the reply fails with the message, not with a token."""
    import torch

    from playground.engine import GenerationError

    def poison(module, args, out):
        return out * float("nan") if args[0].shape[1] == 1 else out
    handle = fast_lm.model.get_input_embeddings().register_forward_hook(poison)
    try:
        with pytest.raises(GenerationError, match="NaN/inf logits at new token 2"):
            _reply(fast_lm, "fast", max_new_tokens=8)
    finally:
        handle.remove()
        torch._dynamo.reset()          # the traced step with the hook inside must not outlive it
    text, stats = _reply(fast_lm, "fast", max_new_tokens=8)     # the model still answers
    assert stats.new_tokens >= 1 and text and not math.isnan(stats.decode_tok_s)
