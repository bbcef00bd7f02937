"""The numerics gate: does a variant still compute what bf16 computes, closely enough for its bit width?

A variant can load, report the right layer classes and still answer garbage (a broken kernel). The gate measures
what a broken kernel cannot fake:
* perplexity on a fixed held-out text (FLORES+ English devtest, not the calibration text) within a stated factor
  of bf16's, per variant;
* on bf16's greedy reply to a fixed prompt, the variant's own next-token choice (teacher-forced: the reply is fed
  in, so one early difference does not derail the rest) agrees with bf16's at a stated share of the positions;
* the layers are the quantization asked for (nf4 vs fp4 by their quant type, int8 by its threshold, GPTQ vs AWQ by
  the checkpoint's method).

Limits come from the committed quality table (README "Quality": 4,096 FLORES tokens; the worst 4-bit ratio there is
fp4's 37.89 / 24.90 = 1.52 on SmolLM2 and 37.95 / 22.08 = 1.72 on Gemma 3) and from this gate's own text, with
margin. Measured here (2026-12-02, CPU), perplexity ratio to bf16 / next-token agreement with bf16's reply:
SmolLM2 fp32 0.996 / 0.91, fp16 0.996 / 0.91, int8 1.014 / 0.88, nf4 1.242 / 0.59, fp4 1.288 / 0.59,
gptq 1.181 / 0.69, awq 1.239 / 0.59; Gemma 3 fp32 0.999 / 0.97, int8 1.032 / 0.97, nf4 1.261 / 0.81,
fp4 1.660 / 0.69, gptq 1.205 / 0.88, awq 1.287 / 0.81 (fp16 NaN). A kernel with permuted outputs scores a
perplexity ratio of 10^7-10^9 and an agreement of 0.00-0.14 (tests/test_numerics_gate.py breaks every quantized
variant that way and checks that the gate says so).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_TOKENS = 384
# the last lines of the FLORES+ file: the quality columns score its first 4,096 tokens, this gate another part
HELD_OUT_LINES = slice(-40, None)

PPL_FACTOR = {"fp32": 1.02, "fp16": 1.02, "int8": 1.1, "nf4": 1.5, "fp4": 2.0, "gptq": 1.5, "awq": 1.6}
AGREEMENT = {"fp32": 0.8, "fp16": 0.8, "int8": 0.7, "nf4": 0.4, "fp4": 0.4, "gptq": 0.4, "awq": 0.4}
REPLY_TOKENS = 32
PROMPTS = {"chat": [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
           "completion": [{"role": "user", "content": "The capital of France is"}]}


def held_out_text() -> list[str]:
    lines = (ROOT / "benchmarks/data/quality/flores_eng.txt").read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if ln.strip()][HELD_OUT_LINES]


def held_out_perplexity(lm) -> float:
    from benchmarks.quality import perplexity
    return perplexity(lm.model, lm.tokenizer, held_out_text(), max_length=512, stride=256,
                      max_tokens=HELD_OUT_TOKENS).ppl


@torch.inference_mode()
def greedy_reply(lm) -> tuple[list[int], list[int]]:
    """(prompt ids, greedy reply ids) of the fixed prompt, in the chat template where the model has one."""
    from benchmarks.quality import input_device
    from playground.engine import build_prompt
    msgs = PROMPTS["chat" if lm.has_chat_template else "completion"]
    prompt_ids, _ = build_prompt(lm, msgs, None)
    x = torch.tensor([list(prompt_ids)], device=input_device(lm.model))
    out = lm.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=REPLY_TOKENS,
                            min_new_tokens=REPLY_TOKENS, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id)
    return list(prompt_ids), out[0, len(prompt_ids):].tolist()


@torch.inference_mode()
def next_token_agreement(lm, prompt: list[int], reply: list[int]) -> float:
    """Share of the reply's positions where ``lm``'s own greedy choice, given the prompt and the reply so far, is
    the reply's next token (1.0 for the model that wrote the reply)."""
    from benchmarks.quality import input_device
    x = torch.tensor([prompt + reply], device=input_device(lm.model))
    logits = lm.model(input_ids=x).logits[0, len(prompt) - 1:-1]
    if not torch.isfinite(logits).all():
        return 0.0
    return (logits.argmax(-1).cpu() == torch.tensor(reply)).float().mean().item()


def quantization_kind(lm) -> str | None:
    """What the loaded layers are, read from the layers (not from the variant's name)."""
    names = {type(m).__name__ for m in lm.model.modules()}
    if "Linear4bit" in names:
        types = {m.weight.quant_state.quant_type for m in lm.model.modules() if type(m).__name__ == "Linear4bit"}
        return types.pop() if len(types) == 1 else f"mixed {sorted(types)}"
    if "Linear8bitLt" in names:
        return "int8"
    qcfg = getattr(lm.model.config, "quantization_config", None)
    if qcfg is not None:
        method = qcfg.get("quant_method") if isinstance(qcfg, dict) else getattr(qcfg, "quant_method", None)
        return str(getattr(method, "value", method)).lower()
    dtypes = {p.dtype for p in lm.model.parameters()}
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtypes.pop()) \
        if len(dtypes) == 1 else None


@dataclass
class Baseline:
    ppl: float
    prompt: list[int]
    reply: list[int]


@dataclass
class GateResult:
    variant: str
    ppl: float
    ppl_ratio: float
    agreement: float
    kind: str | None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


def baseline(lm) -> Baseline:
    return Baseline(held_out_perplexity(lm), *greedy_reply(lm))


def numerics_gate(lm, base: Baseline) -> GateResult:
    v = lm.variant
    ppl = held_out_perplexity(lm)
    ratio = ppl / base.ppl if math.isfinite(ppl) else math.inf
    agreement = next_token_agreement(lm, base.prompt, base.reply)
    kind = quantization_kind(lm)
    r = GateResult(v, ppl, ratio, agreement, kind)
    if not ratio <= PPL_FACTOR[v]:
        r.failures.append(f"perplexity {ppl:.2f} is {ratio:.2f}x bf16's {base.ppl:.2f} (allowed {PPL_FACTOR[v]}x)")
    if agreement < AGREEMENT[v]:
        r.failures.append(f"its next-token choice agrees with bf16's greedy reply at {agreement:.0%} of the "
                          f"positions (needs {AGREEMENT[v]:.0%})")
    if kind != v:
        r.failures.append(f"the layers are {kind!r}, not {v!r}")
    return r


def quantized_modules(model):
    """The layers a quantized variant computes with (what a broken kernel would be)."""
    from playground.manager import quantized_layer_kinds
    kinds = {k for k in quantized_layer_kinds(model) if k != "Linear"}
    return [m for m in model.modules() if type(m).__name__ in kinds]


@contextmanager
def broken_kernel(model, seed: int = 0):
    """Every quantized layer's output features permuted (a stand-in for a kernel that computes garbage)."""
    handles = []
    gen = torch.Generator().manual_seed(seed)
    for m in quantized_modules(model):
        n = int(getattr(m, "out_features", 0))
        perm = torch.randperm(n, generator=gen)

        def hook(mod, args, out, perm=perm):
            return out[..., perm.to(out.device)]
        handles.append(m.register_forward_hook(hook))
    if not handles:
        raise AssertionError("no quantized layer to break")
    try:
        yield len(handles)
    finally:
        for h in handles:
            h.remove()
