"""Issue #17: a long prompt is read in chunks (``engine.PREFILL_CHUNK_TOKENS``), so Stop ends its prefill within one
chunk and lets go of the model. The chunks must not change the answer: the last position's logits are those of the
one-pass prefill, for the eager DynamicCache, the quantized KV cache and the fast decoder's StaticCache."""
from __future__ import annotations

import threading

import pytest
import torch

from conftest import DEFAULT_MODEL

TEXT = "The quick brown fox jumps over the lazy dog near the river bank. "


def _prompt(lm, n_tokens):
    ids = lm.tokenizer(TEXT * (n_tokens // 10 + 1))["input_ids"][:n_tokens]
    assert len(ids) == n_tokens
    return torch.tensor([ids])


def _one_pass(lm, ids, cache=None):
    from playground.fast_decode import last_logits_kwargs
    with torch.inference_mode():
        return lm.model(input_ids=ids, past_key_values=cache, use_cache=True,
                        **last_logits_kwargs(lm.model)).logits[:, -1, :].float()


def _chunked(lm, ids, session=None, past=None, **kw):
    from playground.engine import prefill
    from playground.fast_decode import FastSession, last_logits_kwargs
    ctx = torch.no_grad() if session is not None else torch.inference_mode()
    with ctx:
        logits, past = prefill(lm, lm.model, session or FastSession(), ids, past,
                               last_logits_kwargs(lm.model), **kw)
    return (None if logits is None else logits.float()), past


def test_chunks_cover_the_prompt_once():
    from playground.engine import PREFILL_CHUNK_TOKENS, prefill_chunks
    assert PREFILL_CHUNK_TOKENS == 512
    assert prefill_chunks(512) == [(0, 512)]                    # one chunk: the one-pass prefill as before
    assert prefill_chunks(1100) == [(0, 512), (512, 1024), (1024, 1100)]
    assert prefill_chunks(5, chunk=2) == [(0, 2), (2, 4), (4, 5)]


@pytest.fixture(scope="module")
def smollm_fp32(manager):
    lm = manager.get(DEFAULT_MODEL, "fp32")
    yield lm
    manager.unload(DEFAULT_MODEL, "fp32")


def test_chunked_prefill_gives_the_one_pass_logits_eager_and_quantized_kv(smollm_bf16):
    """1100 tokens = chunks of 512, 512 and 76, in bf16 (the app's default variant)."""
    from playground.engine import make_kv_cache
    lm = smollm_bf16
    ids = _prompt(lm, 1100)
    one = _one_pass(lm, ids)
    seen = []
    chunked, past = _chunked(lm, ids, on_prefill=lambda done, total: seen.append((done, total)))
    assert seen == [(512, 1100), (1024, 1100), (1100, 1100)]
    assert past.get_seq_length() == 1100
    assert torch.allclose(chunked, one, atol=1e-3, rtol=0), (chunked - one).abs().max()
    # the quantized KV cache: a later chunk attends to the earlier chunks' quantized keys (a one-pass prefill
    # attends to its own full-precision ones), so the logits move a little; the cache holds every token, in order
    one_q = _one_pass(lm, ids, make_kv_cache(lm.model, "int8"))
    chunked_q, past_q = _chunked(lm, ids, past=make_kv_cache(lm.model, "int8"))
    assert past_q.get_seq_length() == 1100
    assert int(chunked_q.argmax()) == int(one_q.argmax()) == int(one.argmax())
    assert torch.nn.functional.cosine_similarity(chunked_q, one_q).item() > 0.99


def test_chunked_prefill_gives_the_one_pass_logits_on_the_fast_decoders_static_cache(smollm_fp32):
    """The fast decoder's ``session.prefill`` called once per chunk on its StaticCache (the model finds each chunk's
    positions from the cache's length), against one ``session.prefill`` of the whole prompt and against the eager
    one-pass prefill; then the next decode step from each cache. fp32: in bf16 the static cache's masked attention
    rounds differently at each query length (up to 3 bf16 steps of a logit)."""
    from playground.fast_decode import FastDecoder
    lm = smollm_fp32
    ids = _prompt(lm, 1100)
    decoder = FastDecoder(lm.model, "cpu", compile=False)     # the same prefill and cache as the compiled decoder
    with torch.no_grad():
        with decoder.session(1200, 1, lm.context_length) as whole:
            one = whole.prefill(ids).float()
            step_one = whole.step(one.argmax(-1, keepdim=True)).float()
        with decoder.session(1200, 1, lm.context_length) as chunks:
            chunked, _ = _chunked(lm, ids, session=chunks)
            assert int(chunks.cache.get_seq_length()) == 1100
            step_chunked = chunks.step(chunked.argmax(-1, keepdim=True)).float()
    assert torch.allclose(chunked, one, atol=1e-4, rtol=0), (chunked - one).abs().max()
    assert torch.allclose(step_chunked, step_one, atol=1e-4, rtol=0), (step_chunked - step_one).abs().max()
    assert torch.allclose(chunked, _one_pass(lm, ids), atol=1e-3, rtol=0)


def test_a_cancel_during_the_prefill_stops_it_after_one_chunk_and_frees_the_model(smollm_bf16):
    """Stop pressed while the first of eight chunks runs: no second forward pass, no token, the lock let go."""
    from playground.engine import GenerationParams, stream_reply
    lm = smollm_bf16
    ids = _prompt(lm, 4000).tolist()[0]
    cancel, forwards, held_after = threading.Event(), [], []
    hook = lm.model.register_forward_hook(lambda *_: forwards.append(1))

    def on_prefill(done, total):
        cancel.set()                          # the user's Stop, while the prompt's first chunk was read
        held_after.append(_locked_elsewhere(lm.lock))
    try:
        *events, last = stream_reply(lm, [], None, GenerationParams(max_new_tokens=8, greedy=True), cancel,
                                     prompt_ids=ids, on_prefill=on_prefill)
    finally:
        hook.remove()
    assert len(forwards) == 1, f"{len(forwards)} forward passes after the Stop (one chunk expected)"
    assert held_after == [False]              # between chunks the model is free for another reply or an unload
    assert events == [] and last.done and last.stats.finish_reason == "stopped" and last.stats.new_tokens == 0
    assert last.stats.prompt_tokens == 4000


def _locked_elsewhere(lock) -> bool:
    """Whether another thread could not take ``lock`` now (this thread may hold an RLock re-entrantly)."""
    got = []

    def try_it():
        got.append(lock.acquire(timeout=1))
        if got[0]:
            lock.release()
    t = threading.Thread(target=try_it)
    t.start()
    t.join()
    return not got[0]


def test_benchmark_rows_read_the_prompt_in_one_pass_and_the_chat_keeps_its_chunks():
    """A benchmark's TTFT is one prefill pass, as transformers' generate and the committed long-context runs read
    a prompt; the chat's chunks (for Stop) come back after the measurement."""
    from benchmarks.random_weights import ensure_random_model
    from benchmarks.worker import engine_run
    from playground import engine
    from playground.manager import ModelManager

    mm = ModelManager(device="cpu")
    lm = mm.get(ensure_random_model("tiny-llama")[0], "fp32")
    calls = []
    hook = lm.model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(
        kwargs["input_ids"].shape[1]), with_kwargs=True)
    try:
        n_prompt = 3 * engine.PREFILL_CHUNK_TOKENS + 5
        engine_run(lm, list(range(10, 10 + n_prompt)), 3, 0, "cpu")
    finally:
        hook.remove()
        mm.unload_all()
    assert calls[0] == n_prompt and calls[1:] == [1, 1], calls
    assert engine.PREFILL_CHUNK_TOKENS == 512
