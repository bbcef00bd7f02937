"""Chat engine: templates, streaming, cancel, stats, seeds, and every kind of bad input."""
from __future__ import annotations

import threading

import pytest

from conftest import DEFAULT_MODEL, FRANCE
from playground.engine import GenerationParams, chat, stream_reply
from playground.errors import (GenerationError, InvalidParameterError, ModelNotFoundError, PlaygroundError,
                               PromptTooLongError, VariantUnsupportedError)

GREEDY = GenerationParams(greedy=True, max_new_tokens=24)


def test_bf16_greedy_answers_paris(smollm_bf16):
    text, stats = chat(smollm_bf16, FRANCE, params=GREEDY)
    assert "Paris" in text
    assert stats.mode == "chat" and stats.finish_reason == "eos"
    assert stats.ttft_s > 0 and stats.decode_tok_s > 0 and stats.peak_mem_gb > 0.1
    assert stats.new_tokens == len(smollm_bf16.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert "tok/s" in stats.badge() and "bf16" in stats.badge()


def test_system_prompt_changes_the_prompt(smollm_bf16):
    from playground.engine import build_prompt
    plain, _ = build_prompt(smollm_bf16, FRANCE, None)
    with_system, _ = build_prompt(smollm_bf16, FRANCE, "You are a pirate.")
    assert with_system != plain
    assert "pirate" in smollm_bf16.tokenizer.decode(with_system)
    assert "pirate" not in smollm_bf16.tokenizer.decode(plain)


def test_streaming_grows_and_matches_final(smollm_bf16):
    events = list(stream_reply(smollm_bf16, FRANCE, params=GREEDY))
    assert len(events) >= 3 and events[-1].done and events[-1].stats is not None
    assert "".join(e.delta for e in events) == events[-1].text
    lengths = [len(e.text) for e in events]
    assert lengths == sorted(lengths)


def test_chinese_round_trips_without_broken_characters(smollm_bf16):
    msgs = [{"role": "user", "content": "请用中文介绍一下北京。"}]
    events = list(stream_reply(smollm_bf16, msgs, system="你是一位乐于助人的助手。",
                               params=GenerationParams(greedy=True, max_new_tokens=24)))
    text = events[-1].text
    assert "\ufffd" not in text and all("\ufffd" not in e.delta for e in events)
    assert "".join(e.delta for e in events) == text
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text), text


def test_cancel_stops_mid_reply_and_model_stays_usable(smollm_bf16):
    cancel = threading.Event()
    long = GenerationParams(greedy=True, max_new_tokens=200, min_new_tokens=200)
    events = []
    for event in stream_reply(smollm_bf16, [{"role": "user", "content": "Write a long story."}], params=long,
                              cancel=cancel):
        events.append(event)
        if len(events) == 5:
            cancel.set()
    assert events[-1].done and events[-1].stats.finish_reason == "stopped"
    assert events[-1].stats.new_tokens < 20
    text, _ = chat(smollm_bf16, FRANCE, params=GREEDY)
    assert "Paris" in text


def test_closing_the_stream_stops_generation(smollm_bf16):
    gen = stream_reply(smollm_bf16, [{"role": "user", "content": "Count to one hundred."}],
                       params=GenerationParams(greedy=True, max_new_tokens=200, min_new_tokens=200))
    next(gen), next(gen)
    gen.close()
    assert "Paris" in chat(smollm_bf16, FRANCE, params=GREEDY)[0]


def test_seed_makes_sampling_reproducible(smollm_bf16):
    p = GenerationParams(temperature=1.0, top_p=0.95, top_k=0, max_new_tokens=12, seed=1234)
    msgs = [{"role": "user", "content": "Tell me a fun fact."}]
    a, b = chat(smollm_bf16, msgs, params=p)[0], chat(smollm_bf16, msgs, params=p)[0]
    others = {chat(smollm_bf16, msgs, params=GenerationParams(temperature=1.0, top_k=0, max_new_tokens=12,
                                                               seed=s))[0] for s in (1, 2, 3)}
    assert a == b
    assert len(others | {a}) > 1, "different seeds should give different samples"


def test_min_new_tokens_forces_length(smollm_bf16):
    _, stats = chat(smollm_bf16, FRANCE, params=GenerationParams(greedy=True, max_new_tokens=30,
                                                                 min_new_tokens=30))
    assert stats.new_tokens == 30 and stats.finish_reason == "length"


def test_completion_mode_for_base_model(manager):
    lm = manager.get("gemma3-270m", "bf16")
    assert not lm.has_chat_template
    text, stats = chat(lm, [{"role": "user", "content": "The capital of France is"}],
                       params=GenerationParams(greedy=True, max_new_tokens=8))
    assert stats.mode == "completion" and any("completion mode" in n for n in stats.notes)
    assert "France" in text or "Paris" in text, text


def test_nan_logits_give_a_clear_error(manager):
    lm = manager.get("gemma3-270m", "fp16")
    assert any("NaN" in n for n in lm.stats.notes)
    with pytest.raises(GenerationError, match=r"gemma3-270m in fp16 produced NaN/inf logits"):
        chat(lm, [{"role": "user", "content": "The capital of France is"}], params=GREEDY)
    manager.unload("gemma3-270m", "fp16")


def test_prompt_longer_than_context_names_both_counts(smollm_bf16):
    ctx = smollm_bf16.context_length
    huge = [{"role": "user", "content": "hello " * (ctx + 50)}]
    with pytest.raises(PromptTooLongError) as err:
        chat(smollm_bf16, huge, params=GREEDY)
    msg = str(err.value)
    assert str(ctx) in msg and "tokens" in msg
    n_prompt = int(msg.split("the prompt is ")[1].split(" ")[0])
    assert n_prompt > ctx


def test_near_context_limit_cuts_max_new_tokens(smollm_bf16):
    cfg = smollm_bf16.model.config
    real = cfg.max_position_embeddings
    cfg.max_position_embeddings = 64       # a short context keeps the test fast; the logic is the same
    try:
        events = list(stream_reply(smollm_bf16, [], prompt_ids=[28] * 60,
                                   params=GenerationParams(greedy=True, max_new_tokens=50, min_new_tokens=4)))
    finally:
        cfg.max_position_embeddings = real
    assert any("cut to 4" in n for n in events[-1].stats.notes)
    assert events[-1].stats.new_tokens <= 4


@pytest.mark.parametrize("messages,match", [
    ([{"role": "user", "content": "   "}], "empty"),
    ([], "must end with a user message"),
])
def test_empty_input_is_refused(smollm_bf16, messages, match):
    with pytest.raises(InvalidParameterError, match=match):
        chat(smollm_bf16, messages, params=GREEDY)


@pytest.mark.parametrize("kwargs,match", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"max_new_tokens": 10 ** 9}, "max_new_tokens"),
    ({"temperature": -1}, "temperature"), ({"temperature": 1e6}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"top_k": -5}, "top_k"), ({"repetition_penalty": 100}, "repetition_penalty"), ({"seed": -3}, "seed"),
])
def test_absurd_parameters_are_refused(kwargs, match):
    with pytest.raises(InvalidParameterError, match=match):
        GenerationParams(**kwargs)


def test_unknown_model_and_offline_hub_id(manager):
    with pytest.raises(ModelNotFoundError, match="no such folder"):
        manager.get("./definitely/not/here", "bf16")
    with pytest.raises(ModelNotFoundError, match="not in the local Hugging Face cache"):
        manager.get("some-org/no-such-model-xyz", "bf16")
    with pytest.raises(ModelNotFoundError, match="no model given"):
        manager.get("  ", "bf16")


def test_unknown_variant_and_missing_gpu(manager):
    with pytest.raises(VariantUnsupportedError, match="unknown variant 'int3'"):
        manager.get(DEFAULT_MODEL, "int3")
    with pytest.raises(VariantUnsupportedError, match="no CUDA GPU"):
        manager.get(DEFAULT_MODEL, "bf16", device="cuda")


def test_remote_code_needs_opt_in(tmp_path, manager):
    """A folder whose config points at custom code does not run it unless trust_remote_code is on."""
    import json
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "my_custom_lm", "architectures": ["MyCustomLM"],
        "auto_map": {"AutoConfig": "modeling_custom.MyConfig", "AutoModelForCausalLM": "modeling_custom.MyCustomLM"}}))
    marker = tmp_path / "code_ran"
    (tmp_path / "modeling_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(PlaygroundError, match="trust_remote_code"):
        manager.get(str(tmp_path), "bf16")
    assert not marker.exists(), "custom code ran without opt-in"


@pytest.mark.parametrize("extra", [{"greedy": True, "repetition_penalty": 1.2}, {"temperature": 0.7, "seed": 1}])
def test_min_new_tokens_with_a_logits_processor_is_not_mistaken_for_an_overflow(smollm_bf16, extra):
    """The stop tokens are masked with -inf until min_new_tokens; the overflow check ran after that mask whenever a
    logits processor or sampling was on, so every such reply failed with "NaN/inf logits" at its first token."""
    params = GenerationParams(max_new_tokens=8, min_new_tokens=8, **extra)
    text, stats = chat(smollm_bf16, FRANCE, params=params)
    assert stats.new_tokens == 8 and text.strip(), (stats, text)
