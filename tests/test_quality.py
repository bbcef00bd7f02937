"""Quality metrics (benchmarks/quality.py) on CPU with smollm2-135m-instruct.

References are computed here independently with plain transformers (model's own loss, unpadded forwards), so a
bug in the sliding window or in the padded/cached multiple-choice scorer shows up as a mismatch.
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from benchmarks import quality as q

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def plain_bf16():
    """The same folder the manager loads, opened with plain transformers (no playground code involved)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from playground.catalog import resolve
    path = resolve(MODEL).path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


@pytest.fixture(scope="module")
def english():
    return list(q.load_lines(q.ENGLISH_FILE))


@pytest.fixture(scope="module")
def bf16_ppl(smollm_bf16, english):
    return q.perplexity(smollm_bf16.model, smollm_bf16.tokenizer, english, max_tokens=1024)


def test_data_files_are_complete_and_distinct_from_calibration():
    assert len(q.load_lines(q.ENGLISH_FILE)) == 1012 and len(q.load_lines(q.CHINESE_FILE)) == 400
    for path in q.MC_SETS.values():
        items = q.load_mc_items(path)
        assert len(items) == 200 and len({i["id"] for i in items}) == 200
        assert all(0 <= i["answer"] < len(i["choices"]) and len(i["choices"]) >= 3 for i in items)
    calib = q.DATA.parents[2] / "playground" / "data" / "calibration.txt"
    if calib.exists():  # evaluation text must not be calibration text
        calib_text = calib.read_text(encoding="utf-8")
        held_out = [s for s in q.load_lines(q.ENGLISH_FILE) + q.load_lines(q.CHINESE_FILE) if len(s) > 20]
        assert not [s for s in held_out if s in calib_text]


def test_perplexity_matches_plain_transformers_loss(smollm_bf16, plain_bf16, english):
    model, tok = plain_bf16
    texts = english[:12]
    ids = tok("\n\n".join(texts), return_tensors="pt")["input_ids"]
    assert 100 < ids.shape[1] < 512                      # one window: the model's own loss is the reference
    with torch.inference_mode():
        ref = math.exp(model(input_ids=ids, labels=ids).loss.item())
    res = q.perplexity(smollm_bf16.model, smollm_bf16.tokenizer, texts, max_length=512, stride=256)
    assert res.tokens == ids.shape[1] - 1
    assert res.ppl == pytest.approx(ref, rel=1e-3)
    assert res.nll == pytest.approx(math.log(res.ppl))


def test_sliding_windows_match_chunked_losses(smollm_bf16, plain_bf16, english):
    model, tok = plain_bf16
    ids = tok("\n\n".join(english[:12]), return_tensors="pt")["input_ids"]
    n, total = ids.shape[1], 0.0
    with torch.inference_mode():                          # non-overlapping windows, computed by hand
        for begin in range(0, n, 128):
            chunk = ids[:, begin:begin + 128]
            if chunk.shape[1] > 1:
                total += model(input_ids=chunk, labels=chunk).loss.item() * (chunk.shape[1] - 1)
    windows = math.ceil(n / 128) - (1 if n % 128 == 1 else 0)
    res = q.perplexity(smollm_bf16.model, smollm_bf16.tokenizer, english[:12], max_length=128, stride=128)
    assert res.tokens == n - windows
    assert res.ppl == pytest.approx(math.exp(total / (n - windows)), rel=1e-3)
    overlapping = q.perplexity(smollm_bf16.model, smollm_bf16.tokenizer, english[:12], max_length=128, stride=64)
    assert overlapping.tokens == n - 1                     # every token but the first, each exactly once
    assert overlapping.ppl < res.ppl * 1.02                # more context does not make it worse


def test_overlapping_windows_match_the_hugging_face_recipe(smollm_bf16, plain_bf16, english):
    """Overlapping windows against the transformers docs' sliding-window recipe, written out with plain transformers:
    context tokens get label -100, the model's own loss (mean over the scored tokens) times their count."""
    model, tok = plain_bf16
    ids = tok("\n\n".join(english[:12]), return_tensors="pt")["input_ids"]
    n, max_length, stride = ids.shape[1], 128, 48
    total, scored, prev_end = 0.0, 0, 0
    with torch.inference_mode():
        for begin in range(0, n, stride):
            end = min(begin + max_length, n)
            window = ids[:, begin:end]
            labels = window.clone()
            labels[:, :-(end - prev_end)] = -100
            count = int((labels[:, 1:] != -100).sum())       # the loss shifts labels by one
            total += model(input_ids=window, labels=labels).loss.item() * count
            scored += count
            prev_end = end
            if end == n:
                break
    res = q.perplexity(smollm_bf16.model, smollm_bf16.tokenizer, english[:12], max_length=max_length, stride=stride)
    assert res.tokens == scored == n - 1
    assert res.ppl == pytest.approx(math.exp(total / scored), rel=1e-3)


def test_max_tokens_caps_tokens_scored(bf16_ppl):
    assert bf16_ppl.tokens == 1024
    assert 5 < bf16_ppl.ppl < 100


def test_int8_perplexity_close_to_bf16(manager, english, bf16_ppl):
    lm = manager.get(MODEL, "int8")
    try:
        res = q.perplexity(lm.model, lm.tokenizer, english, max_tokens=1024)
    finally:
        manager.unload(MODEL, "int8")
    assert res.tokens == bf16_ppl.tokens
    assert res.ppl == pytest.approx(bf16_ppl.ppl, rel=0.05)


@pytest.fixture(scope="module")
def destroyed(plain_bf16):
    """A copy whose decoder Linear weights are rounded to 2 bits per row (RTN, min-max, 4 levels)."""
    model = copy.deepcopy(plain_bf16[0])
    with torch.no_grad():
        for mod in model.model.layers.modules():
            if isinstance(mod, torch.nn.Linear):
                w = mod.weight.float()
                lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)
                scale = (hi - lo).clamp_min(1e-8) / 3
                mod.weight.copy_((torch.round((w - lo) / scale).clamp(0, 3) * scale + lo).to(mod.weight.dtype))
    return model


def test_destroyed_model_is_measurably_worse(destroyed, plain_bf16, english, bf16_ppl):
    res = q.perplexity(destroyed, plain_bf16[1], english, max_tokens=1024)
    assert res.ppl > 1.5 * bf16_ppl.ppl


@pytest.mark.slow
def test_2bit_gptq_variant_is_measurably_worse(manager, english, bf16_ppl):
    """A destructive setting of a real variant, loaded as the benchmark loads it: GPTQ with 2 bits and one
    group per row, calibrated on 8 paragraphs (not 32: a quicker quantization, and no kinder to the model). Its
    one-time quantization is cached in the quantized cache."""
    from playground.variants import VariantOptions
    lm = manager.get(MODEL, "gptq", options=VariantOptions(bits=2, group_size=-1, calibration_samples=8))
    try:
        assert lm.stats.weights_bytes < 0.5 * manager.get(MODEL, "bf16").stats.weights_bytes
        res = q.perplexity(lm.model, lm.tokenizer, english, max_tokens=1024)
    finally:
        manager.unload(MODEL, "gptq")
    assert res.tokens == bf16_ppl.tokens
    assert res.ppl > 1.5 * bf16_ppl.ppl


@pytest.mark.slow
def test_gemma3_awq_is_close_to_bf16(manager, english):
    """Gemma 3's AWQ checkpoint once scored perplexity 141,871 (bf16: 22): gptqmodel folded scales into the wrong
    norms (playground/gptq_awq.py, _fix_awq_scaling_for_gemma3). Its quantization is cached after the first run."""
    ppl = {}
    for variant in ("bf16", "awq"):
        lm = manager.get("gemma3-270m", variant)
        try:
            ppl[variant] = q.perplexity(lm.model, lm.tokenizer, english, max_tokens=1024).ppl
        finally:
            manager.unload("gemma3-270m", variant)
    assert 10 < ppl["bf16"] < 40
    assert ppl["bf16"] < ppl["awq"] < 2 * ppl["bf16"], ppl


def test_mc_scorer_matches_unpadded_forwards():
    """Cached-context + right-padded batch gives the same log-likelihoods as one plain forward per choice."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from playground.catalog import resolve
    path = resolve(MODEL).path                             # fp32: the two ways must agree to rounding
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    for item in q.load_mc_items(q.MC_SETS["arc_easy"])[:3]:
        context = f"Question: {item['question']}\nAnswer:"
        n_ctx = len(tok(context)["input_ids"])
        ref = []
        for choice in item["choices"]:
            full = tok(context + " " + choice)["input_ids"]
            with torch.inference_mode():
                logp = model(input_ids=torch.tensor([full])).logits[0].float().log_softmax(-1)
            ref.append(sum(logp[j - 1, full[j]].item() for j in range(n_ctx, len(full))))
        got = q.choice_loglikelihoods(model, tok, item["question"], item["choices"])
        assert got == pytest.approx(ref, abs=1e-3)


def test_mc_scorer_picks_the_models_own_argmax(smollm_bf16):
    """Hand-checkable items: one-token choices ranked by the model's next-token logits."""
    model, tok = smollm_bf16.model, smollm_bf16.tokenizer
    for question in ("What is the capital of France?", "What do plants need to make food?"):
        context = f"Question: {question}\nAnswer:"
        ids = tok(context)["input_ids"]
        with torch.inference_mode():
            order = model(input_ids=torch.tensor([ids])).logits[0, -1].argsort(descending=True)
        ranked = []
        for t in order[:3000].tolist():
            s = tok.decode([t])
            if s.startswith(" ") and s[1:].isalpha() and tok(context + s)["input_ids"] == ids + [t]:
                ranked.append(s[1:])
            if len(ranked) == 4:
                break
        item = {"question": question, "choices": [ranked[3], ranked[1], ranked[0], ranked[2]], "answer": 2}
        ll = q.choice_loglikelihoods(model, tok, question, item["choices"])
        assert sorted(range(4), key=ll.__getitem__, reverse=True) == [2, 1, 3, 0]
        assert q.mc_accuracy(model, tok, [item]).accuracy_raw == 1.0


def test_mc_accuracy_bf16_beats_chance_and_destroyed_is_near_chance(smollm_bf16, destroyed, plain_bf16):
    items = q.load_mc_items(q.MC_SETS["arc_easy"])
    res = q.mc_accuracy(smollm_bf16.model, smollm_bf16.tokenizer, items, limit=100)
    assert res.n == 100 and 0.0 <= res.accuracy <= 1.0 and 0.0 <= res.accuracy_raw <= 1.0
    assert res.accuracy == res.correct / 100 and res.accuracy_raw == res.correct_raw / 100
    assert res.accuracy_raw >= 0.40 and res.accuracy >= 0.40  # measured 0.50 / 0.52; chance is about 0.25
    bad = q.mc_accuracy(destroyed, plain_bf16[1], items, limit=100)
    assert bad.accuracy_raw <= 0.36 and bad.accuracy <= 0.36  # near chance, far below bf16


def test_evaluate_quality_columns(smollm_bf16):
    row = q.evaluate_quality(smollm_bf16, ppl_en_tokens=256, ppl_zh_tokens=128, mc_items=5)
    assert set(row) >= {"perplexity", "perplexity_zh", "accuracy", "accuracy_raw", "quality_tokens",
                        "quality_items"}
    assert row["quality_tokens"] == 256 + 128 and row["quality_items"] == 5
    assert row["perplexity"] > 1 and row["perplexity_zh"] > 1 and 0 <= row["accuracy"] <= 1
    json.dumps(row)                                        # plain numbers, ready for a results row
    skipped = q.evaluate_quality(smollm_bf16, ppl_en_tokens=0, ppl_zh_tokens=64, mc_items=0)
    assert skipped["perplexity"] is None and skipped["accuracy"] is None and skipped["quality_tokens"] == 64
    with pytest.raises(ValueError):
        q.evaluate_quality(smollm_bf16, mc_set="nope")
