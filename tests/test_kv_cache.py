"""Quantized KV cache (GenerationParams.kv_cache): transformers' QuantizedCache with quanto (int4/int2) or HQQ
(int8)."""
from __future__ import annotations

import pytest

from conftest import FRANCE


def _reply(lm, kv_cache, n=12, decode="eager", messages=FRANCE):
    from playground.engine import GenerationParams, stream_reply
    last = None
    for last in stream_reply(lm, messages, None, GenerationParams(max_new_tokens=n, greedy=True, decode=decode,
                                                                  kv_cache=kv_cache)):
        pass
    return last.text, last.stats


def test_invalid_kv_cache_values_are_refused_clearly():
    from playground.engine import GenerationParams, make_kv_cache
    from playground.errors import InvalidParameterError
    for bad in ("int3", "fp8", "", "INT4"):
        with pytest.raises(InvalidParameterError, match="kv_cache must be one of default, int8, int4, int2"):
            GenerationParams(kv_cache=bad)
    with pytest.raises(InvalidParameterError, match="kv_cache must be one of"):
        make_kv_cache(None, "int5")


def test_benchmark_config_validates_kv_cache():
    from benchmarks.config import ConfigError, RunConfig
    cfg = RunConfig(models=["smollm2-135m-instruct"], kv_cache=["default", "int4"], decode_modes=["eager"])
    assert cfg.kv_cache == ["default", "int4"] and cfg.units() == 1 + 2
    with pytest.raises(ConfigError, match="kv_cache: unknown int3: choose from default, int8, int4, int2"):
        RunConfig(models=["smollm2-135m-instruct"], kv_cache=["int3"])
    from benchmarks.results import COLUMNS
    assert "kv_cache" in COLUMNS and "kv_cache_gb" in COLUMNS


def test_the_quantized_cache_is_really_used(smollm_bf16):
    import torch
    from optimum.quanto import QBitsTensor
    from transformers import QuantizedCache

    from playground.engine import make_kv_cache
    model = smollm_bf16.model
    cache = make_kv_cache(model, "int4")
    assert isinstance(cache, QuantizedCache)
    ids = torch.tensor([smollm_bf16.tokenizer("The capital of France is Paris. " * 20)["input_ids"]])
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    assert out.past_key_values is cache
    layer = cache.layers[0]
    assert isinstance(layer._quantized_keys, QBitsTensor) and layer._quantized_keys.qtype.bits == 4
    assert isinstance(layer._quantized_values, QBitsTensor)
    assert cache.get_seq_length() == ids.shape[1]
    assert make_kv_cache(model, "default") is None


def test_int4_kv_still_answers_paris_and_holds_fewer_bytes(smollm_bf16):
    text_default, s_default = _reply(smollm_bf16, "default", n=8)
    text_q, s_q = _reply(smollm_bf16, "int4", n=8)
    assert "Paris" in text_default and "Paris" in text_q, (text_default, text_q)
    assert s_q.kv_cache == "int4" and s_default.kv_cache == "default"
    assert 0 < s_q.kv_cache_gb < s_default.kv_cache_gb, (s_q.kv_cache_gb, s_default.kv_cache_gb)


def test_kv_bytes_analytic_for_default_and_smaller_when_quantized(smollm_bf16):
    """Over a longer context the quantized part dominates: int4 < ~1/3, int2 < int4 of the bf16 cache."""
    import torch

    from playground.engine import kv_cache_bytes, make_kv_cache
    model, cfg = smollm_bf16.model, smollm_bf16.model.config
    ids = torch.randint(100, 5000, (1, 256))
    sizes = {}
    with torch.inference_mode():
        for kv in ("default", "int4", "int2"):
            out = model(input_ids=ids, past_key_values=make_kv_cache(model, kv), use_cache=True, logits_to_keep=1)
            sizes[kv] = kv_cache_bytes(out.past_key_values)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    assert sizes["default"] == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 256 * 2   # bf16
    assert sizes["int2"] < sizes["int4"] < sizes["default"] / 3, sizes


def test_fast_mode_with_a_quantized_kv_cache_decodes_eagerly_with_a_note(smollm_bf16, monkeypatch):
    import playground.fast_decode as fast_decode_mod

    def no_compile(lm, compile=True):    # the fallback must not even start the fast decoder
        raise AssertionError("fast decoding was started for a quantized KV cache")
    monkeypatch.setattr(fast_decode_mod, "enable_fast_decode", no_compile)
    text, stats = _reply(smollm_bf16, "int4", n=6, decode="fast")
    assert stats.decode_mode == "eager" and text
    assert any("kv_cache=int4" in n and "decodes eagerly" in n for n in stats.notes), stats.notes


def test_kv_cache_perplexity_scores_the_same_tokens(smollm_bf16):
    """kv_cache_perplexity with the default cache and a 2-bit one feeds the model the very same tokens (seen by a
    hook on the model's inputs: the same 160-token prefill, then the same 24 tokens in chunks of 12); the default
    cache's perplexity is that of one plain forward pass scoring those 24 tokens (within 3%: bf16 chunked vs not);
    and the 2-bit cache costs perplexity, within a bound. Measured on CPU (SmolLM2-135M bf16): default 11.0,
    int2 69 (x6.3), one plain pass 11.1. Asserted: int2 between 2x and 15x the default's."""
    import math

    import torch
    import torch.nn.functional as F

    from benchmarks.quality import kv_cache_perplexity
    model = smollm_bf16.model
    kw = dict(context_tokens=160, scored_tokens=24, chunk=12)
    fed = {}

    def run(kv):
        fed[kv] = []
        hook = model.register_forward_pre_hook(
            lambda mod, args, kwargs: fed[kv].append(kwargs["input_ids"][0].tolist()), with_kwargs=True)
        try:
            return kv_cache_perplexity(model, smollm_bf16.tokenizer, kv, **kw)
        finally:
            hook.remove()
    base, q = run("default"), run("int2")
    assert base.tokens == q.tokens == 24
    assert fed["default"] == fed["int2"], "the two caches were fed different tokens"
    assert [len(x) for x in fed["default"]] == [160, 12, 12]
    # the score is the perplexity of the 24 tokens after the prefill, each predicted from all the tokens before it
    ids = torch.tensor([sum(fed["default"], [])])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0]
    plain = math.exp(F.cross_entropy(logits[159:183].float(), ids[0, 160:184]).item())
    assert base.ppl == pytest.approx(plain, rel=0.03), (base.ppl, plain)
    assert 1 < base.ppl < 200
    # a 2-bit cache loses information: it costs perplexity, but it stays in the same range (not noise)
    assert 2 * base.ppl < q.ppl < 15 * base.ppl, (base.ppl, q.ppl)


@pytest.mark.parametrize("variant", ["int8", "nf4", "gptq", "awq"])
def test_a_quantized_kv_cache_combines_with_quantized_weights(manager, variant):
    """The KV option only touches the cache: with every quantized weight variant the reply still comes, through a
    cache that holds fewer bytes than the same variant's default cache."""
    from conftest import DEFAULT_MODEL
    lm = manager.get(DEFAULT_MODEL, variant)
    try:
        text_default, s_default = _reply(lm, "default", n=8)
        text_q, s_q = _reply(lm, "int4", n=8)
        assert text_q.strip() and s_q.new_tokens > 0, (variant, text_q)
        assert s_q.kv_cache == "int4" and s_q.variant == variant
        assert 0 < s_q.kv_cache_gb < 0.6 * s_default.kv_cache_gb, (variant, s_q.kv_cache_gb, s_default.kv_cache_gb)
    finally:
        manager.unload(DEFAULT_MODEL, variant)
