"""README claims about variants and decoding that no other test covered, each checked on real models and kernels.

1. GPTQ/AWQ: "checkpoints are made once per model and settings and cached …; the calibration time is reported apart
   from the load time" (``LoadStats.quantize_s`` > 0 on a first, calibrated quantization, 0 on a cache hit, and
   ``load_s`` does not contain it).
2. "nf4, fp4: compute dtype and double quantization as options", "int8: … fp16 outliers over ``int8_threshold``":
   the options reach the bitsandbytes layers and change what the model computes.
3. "a prompt longer than a sliding attention window decodes eagerly and says so" (``engine.stream_reply`` with a
   fast decoder on a Mistral-style model with a small window).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from conftest import DEFAULT_MODEL

PROMPT = "The capital of France is Paris. The capital of Italy is"


# ---- 1. GPTQ / AWQ quantization time -----------------------------------------------------------------------------
def _small_real_checkpoint(folder: Path) -> str:
    """SmolLM2's architecture and tokenizer at 2 layers × 256 wide, saved as a plain transformers folder.

    It carries no random-weights marker, so the playground calibrates it with gptqmodel's real GPTQ/AWQ like any
    downloaded model (random-weight models get random 4-bit codes instead, playground/variants.py): the same code
    path as SmolLM2 itself, in seconds instead of minutes on 2 cores."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from playground.catalog import resolve
    from playground.random_checkpoints import RANDOM_MARKER

    src = resolve(DEFAULT_MODEL).path
    cfg = AutoConfig.from_pretrained(src)
    cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 2, 256, 512
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim = 4, 2, 64
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(src).save_pretrained(folder)
    assert not (folder / RANDOM_MARKER).exists()
    return str(folder)


def test_first_gptq_and_awq_quantization_time_is_reported_apart_from_the_load(tmp_path, monkeypatch):
    from playground.catalog import cache_root
    from playground.gptq_awq import SIDECAR
    from playground.manager import ModelManager
    from playground.variants import VariantOptions, quantized_cache_dir
    from playground.catalog import resolve

    folder = _small_real_checkpoint(tmp_path / "small-llama")
    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path / "fresh-cache"))   # nothing quantized yet
    assert cache_root() == tmp_path / "fresh-cache"
    source = resolve(folder)
    ids = None
    for variant in ("gptq", "awq"):
        ckpt = quantized_cache_dir(source, variant, VariantOptions())
        assert ckpt.is_relative_to(tmp_path / "fresh-cache") and not ckpt.exists()

        first = ModelManager(device="cpu")
        t0 = time.perf_counter()
        lm = first.get(folder, variant)
        wall = time.perf_counter() - t0
        st = lm.stats
        print(f"{variant}: first load quantize_s {st.quantize_s:.2f} s, load_s {st.load_s:.2f} s, wall {wall:.2f} s")
        assert st.quantize_s > 0, st
        assert st.load_s > 0, st
        # both are measured inside get(): if load_s also held the calibration, the two would overlap and their sum
        # would exceed the wall time of the whole call
        assert st.quantize_s + st.load_s <= wall, (st, wall)
        assert not any("random weights" in n for n in st.notes), st.notes
        # a real calibration ran (gptqmodel's sidecar), and the reported time is the one stored with the checkpoint
        sidecar = json.loads((ckpt / SIDECAR).read_text())
        assert (sidecar["method"] == variant and sidecar["calibration_samples"] > 0
                and sidecar["seconds"]["quantize"] > 0)
        recorded = json.loads((ckpt / "playground_quantization.json").read_text())
        assert recorded["quantize_s"] == round(st.quantize_s, 2)
        assert lm.kernel, "the gptqmodel kernel that runs the layers is recorded"
        made_at = (ckpt / "config.json").stat().st_mtime_ns
        if ids is None:
            ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
        with torch.no_grad():
            assert torch.isfinite(lm.model(ids).logits).all()
        first.unload_all()

        second = ModelManager(device="cpu")                # like a new process: the checkpoint is on disk
        t0 = time.perf_counter()
        lm2 = second.get(folder, variant)
        wall2 = time.perf_counter() - t0
        print(f"{variant}: second load quantize_s {lm2.stats.quantize_s:.2f} s, load_s {lm2.stats.load_s:.2f} s, "
              f"wall {wall2:.2f} s")
        assert lm2.stats.quantize_s == 0.0, lm2.stats
        assert 0 < lm2.stats.load_s <= wall2
        assert (ckpt / "config.json").stat().st_mtime_ns == made_at, "the cached checkpoint was made again"
        second.unload_all()


# ---- 2. bitsandbytes options ---------------------------------------------------------------------------------------
def _logits(lm) -> torch.Tensor:
    ids = lm.tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        return lm.model(ids).logits.float()


def _layers(lm, cls):
    layers = [m for m in lm.model.modules() if isinstance(m, cls)]
    assert len(layers) >= 30 * 7, f"{lm.label}: only {len(layers)} {cls.__name__} layers"
    return layers


@pytest.mark.slow
def test_bitsandbytes_compute_dtype_double_quant_and_int8_threshold_take_effect(manager):
    import bitsandbytes as bnb

    from playground.variants import VariantOptions
    loaded = []

    def get(variant, **opts):
        lm = manager.get(DEFAULT_MODEL, variant, options=VariantOptions(**opts))
        loaded.append(variant)
        return lm

    try:
        # -- nf4 and fp4: compute dtype and nested (double) quantization of the absmax scales --------------------
        for qtype, opts in (("nf4", {"compute_dtype": "fp32"}), ("nf4", {"double_quant": True}),
                            ("fp4", {"compute_dtype": "fp16", "double_quant": True})):
            base = get(qtype)
            other = get(qtype, **opts)
            want_dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(opts.get("compute_dtype"), torch.bfloat16)
            nested = opts.get("double_quant", False)
            for lm, dtype, dq in ((base, torch.bfloat16, False), (other, want_dtype, nested)):
                for layer in _layers(lm, bnb.nn.Linear4bit):
                    qs = layer.weight.quant_state
                    assert layer.compute_dtype == dtype, (lm.options, layer.compute_dtype)
                    assert qs.quant_type == qtype and qs.dtype == dtype
                    if getattr(qs, "packing_format_for_cpu", False):
                        # bitsandbytes repacked the layer for its AVX512-BF16 CPU kernel at the first forward,
                        # expanding nested absmax scales back to bf16; it keeps what they were
                        assert qs.original_nested is dq, (lm.options, qs.original_nested)
                    elif dq:   # the absmax scales are themselves 8-bit, with a second-level state
                        assert qs.nested and qs.state2 is not None and qs.absmax.dtype == torch.uint8
                    else:
                        assert not qs.nested and getattr(qs, "state2", None) is None
                        assert qs.absmax.dtype == torch.float32
                assert {p.dtype for n, p in lm.model.named_parameters() if "norm" in n} == {dtype}
            diff = (_logits(base) - _logits(other)).abs().max().item()
            print(f"{qtype} {opts}: max |logit difference| vs the default options {diff:.4f}")
            assert diff > 1e-2, f"{qtype} with {opts} computes the same logits as the defaults"

        # -- int8: the outlier threshold of LLM.int8 -------------------------------------------------------------
        default = get("int8")
        no_outliers = get("int8", int8_threshold=0.0)
        low = get("int8", int8_threshold=1.5)
        for lm, thr in ((default, 6.0), (no_outliers, 0.0), (low, 1.5)):
            assert {layer.state.threshold for layer in _layers(lm, bnb.nn.Linear8bitLt)} == {thr}
        outs = {}
        for name, lm in (("6.0", default), ("0.0", no_outliers), ("1.5", low)):
            outs[name] = _logits(lm)
            layers = _layers(lm, bnb.nn.Linear8bitLt)
            # with a threshold the forward pass keeps the outlier columns in fp16 (state.idx); at 0 it has none
            with_outliers = sum(1 for layer in layers if layer.state.idx is not None and layer.state.idx.numel())
            print(f"int8 threshold {name}: {with_outliers} of {len(layers)} layers had fp16 outlier columns")
            if name == "0.0":
                assert with_outliers == 0
            else:
                assert with_outliers > 0
        counts = {name: sum(int(layer.state.idx.numel()) for layer in _layers(lm, bnb.nn.Linear8bitLt)
                            if layer.state.idx is not None)
                  for name, lm in (("6.0", default), ("1.5", low))}
        assert counts["1.5"] > counts["6.0"], counts     # a lower threshold sends more columns to fp16
        for name in ("0.0", "1.5"):
            diff = (outs[name] - outs["6.0"]).abs().max().item()
            print(f"int8 threshold {name}: max |logit difference| vs 6.0 {diff:.4f}")
            assert diff > 1e-2, f"int8_threshold={name} computes the same logits as 6.0"
    finally:
        for lm in list(manager.loaded()):
            if lm.variant in ("nf4", "fp4", "int8"):
                manager.unload(lm.name, lm.variant)


# ---- 3. sliding window: eager decoding, with a note --------------------------------------------------------------
WINDOW = 128        # = the fast decoder's smallest CPU bucket: a short reply fits, a longer prompt does not


def _tiny_mistral(folder: Path) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM

    from benchmarks.random_weights import make_tokenizer
    spec = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512, sliding_window=WINDOW, max_position_embeddings=4096,
                bos_token_id=1, eos_token_id=2)
    cfg = AutoConfig.for_model("mistral", **spec)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    make_tokenizer(spec, " ".join(f"word{i}" for i in range(400))).save_pretrained(folder)
    return str(folder)


def test_prompt_longer_than_the_sliding_window_decodes_eagerly_and_says_so(tmp_path):
    from playground.engine import GenerationParams, stream_reply
    from playground.fast_decode import FastDecoder
    from playground.manager import ModelManager

    mm = ModelManager(device="cpu")
    lm = mm.get(_tiny_mistral(tmp_path / "tiny-mistral"), "fp32")
    try:
        assert lm.model.config.sliding_window == WINDOW
        lm.fast = FastDecoder(lm.model, "cpu", backend="eager")   # dynamo without inductor: seconds, not minutes

        def reply(n_words, decode="auto"):
            msg = [{"role": "user", "content": " ".join(f"word{i}" for i in range(1, n_words + 1))}]
            last = None
            for last in stream_reply(lm, msg, None, GenerationParams(max_new_tokens=12, min_new_tokens=12,
                                                                     greedy=True, decode=decode)):
                pass
            return last.text, last.stats

        short_text, short = reply(20)
        assert short.prompt_tokens == 20 and short.new_tokens == 12
        assert short.decode_mode.startswith("compiled"), (short.decode_mode, short.notes)
        assert not any("sliding" in n for n in short.notes), short.notes
        assert lm.fast.compiles == 1

        long_text, long = reply(WINDOW + 72)
        assert long.prompt_tokens == WINDOW + 72 > WINDOW and long.new_tokens == 12
        assert long.decode_mode == "eager", (long.decode_mode, long.notes)
        why = [n for n in long.notes if "sliding-window" in n]
        assert why, f"the eager fallback was not explained: {long.notes}"
        assert f"window {WINDOW}" in why[0] and "eagerly" in why[0], why
        assert lm.fast.compiles == 1, "the long prompt must not have compiled anything"

        # the same tokens as plain eager decoding, both ways; and the fast path still works afterwards
        assert reply(WINDOW + 72, decode="eager")[0] == long_text
        assert reply(20, decode="eager")[0] == short_text
        again_text, again = reply(20)
        assert again.decode_mode.startswith("compiled") and again_text == short_text
    finally:
        lm.fast = None
        mm.unload_all()
