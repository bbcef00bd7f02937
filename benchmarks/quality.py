"""Quality metrics next to speed: held-out perplexity (English, Chinese) and multiple-choice accuracy.

Data lives in ``benchmarks/data/quality/`` (provenance and licenses in SOURCES.md there). Every metric is
computed in float32 from the model's logits, so bf16, fp32, bitsandbytes and gptq/awq variants of one model are
scored the same way and their numbers can be compared. Perplexities of models with different tokenizers are
not comparable with each other (they are per token); compare variants of one model.
"""
from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from playground.engine import input_device

DATA = Path(__file__).resolve().parent / "data" / "quality"
ENGLISH_FILE = DATA / "flores_eng.txt"        # FLORES+ devtest, English
CHINESE_FILE = DATA / "hsk_zh.txt"            # HSK graded sentences, Mandarin
MC_SETS = {"arc_easy": DATA / "arc_easy_200.jsonl",              # ARC-Easy test, fixed-seed sample of 200
           "arc_challenge": DATA / "arc_challenge_200.jsonl"}    # ARC-Challenge test, likewise
MC_FILE = MC_SETS["arc_challenge"]


@dataclass
class PerplexityResult:
    ppl: float      # exp(nll)
    nll: float      # mean negative log-likelihood per scored token (nats)
    tokens: int     # tokens scored


@dataclass
class AccuracyResult:
    accuracy: float          # acc_norm: choice log-likelihood divided by its length in characters
    n: int                   # items scored
    correct: int             # items right by acc_norm
    accuracy_raw: float = 0.0  # acc: summed log-likelihood of the choice tokens
    correct_raw: int = 0
    nonfinite: int = 0         # items with a NaN/inf choice score (e.g. fp16 overflow): their answer is noise


@lru_cache(maxsize=None)
def load_lines(path: str | Path) -> tuple[str, ...]:
    return tuple(line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())


@lru_cache(maxsize=None)
def load_mc_items(path: str | Path = MC_FILE) -> tuple[dict, ...]:
    """Items ``{"id", "question", "choices": [str, ...], "answer": int}``."""
    return tuple(json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())


def _bos_id(tokenizer) -> int | None:
    """The BOS id if the tokenizer adds one by default (Gemma does, SmolLM2 does not)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def _logits(model, input_ids, attention_mask, keep) -> torch.Tensor:
    """Logits at positions ``keep`` (an int: that many last positions; or a 1-D index tensor).

    Asks the model for only those positions (``logits_to_keep``: skips most of the lm_head, which dominates
    for large vocabularies) and falls back to slicing full logits for models that do not take the argument.
    """
    try:
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False)
        return out.logits
    except TypeError:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        return logits[:, -keep:] if isinstance(keep, int) else logits[:, keep.to(logits.device)]


@torch.inference_mode()
def perplexity(model, tokenizer, texts: list[str], *, max_length: int = 512, stride: int = 256,
               max_tokens: int | None = None) -> PerplexityResult:
    """Sliding-window perplexity of ``"\\n\\n".join(texts)`` (the Hugging Face recipe).

    The text is tokenized once; windows of ``max_length`` tokens start every ``stride`` tokens and only the
    tokens a window adds (not the overlap it shares with the previous one, which serves as context) are
    scored. ``max_tokens`` caps the tokens scored (the text is cut, so a variant sees the same text as its
    baseline; with ``stride == max_length`` the first token of each window has no context and is not scored).
    If the tokenizer adds a BOS token by default it is put in front of every window as context and never
    scored: Gemma without BOS scores far worse (FLORES ppl 42 instead of 24), which is not a quantization effect.
    """
    if stride < 1 or max_length < 2 or stride > max_length:
        raise ValueError(f"need 1 <= stride <= max_length and max_length >= 2, got {stride=} {max_length=}")
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    bos = _bos_id(tokenizer)
    if max_tokens is not None:
        ids = ids[:max_tokens + (0 if bos is not None else 1)]   # without BOS the first token is not scored
    device = input_device(model)
    window = max_length - (1 if bos is not None else 0)
    stride = min(stride, window)                                  # no token may fall between two windows
    total_nll, total_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        chunk = ids[begin:end]
        if bos is not None:
            chunk = torch.cat([torch.tensor([bos]), chunk])
        n_score = min(end - prev_end, len(chunk) - 1)             # the new tokens of this window
        if n_score > 0:
            x = chunk.unsqueeze(0).to(device)
            logits = _logits(model, x, torch.ones_like(x), n_score + 1)[0, -(n_score + 1):-1]
            targets = chunk[-n_score:].to(logits.device)
            total_nll += F.cross_entropy(logits.float(), targets, reduction="sum").item()
            total_tokens += n_score
        prev_end = end
        if end == len(ids):
            break
    if total_tokens == 0:
        raise ValueError("no tokens to score: the text is empty or max_tokens is 0")
    nll = total_nll / total_tokens
    ppl = math.inf if nll > 709 else math.exp(nll)                # a NaN (fp16 overflow) stays NaN
    return PerplexityResult(ppl=ppl, nll=nll, tokens=total_tokens)


def _choice_tokens(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids split as lm-eval does: encode the whole, cut at the context's length."""
    whole = tokenizer(context + continuation, add_special_tokens=True)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=True)["input_ids"]
    n_ctx = len(ctx)
    if n_ctx >= len(whole) or whole[:n_ctx] != ctx:   # the boundary merged: give the merged token to the choice
        n_ctx = len(ctx) - 1
    n_ctx = max(n_ctx, 1)
    return whole[:n_ctx], whole[n_ctx:]


def _pad_right(seqs: list[list[int]], pad: int, prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids of ``seqs`` padded right, and an attention mask that also covers ``prefix`` cached positions."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), prefix + length), dtype=torch.long)
    mask[:, :prefix] = 1
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, prefix:prefix + len(s)] = 1
    return ids, mask


def _choice_logprobs(model, seqs: list[list[int]], shared: int, pad: int) -> torch.Tensor:
    """Log-probabilities (float32) at positions ``shared - 1 ...`` of each sequence, which all start with the
    same ``shared`` tokens. The shared context runs once and its KV cache is repeated for the choices, which
    run together in one batch padded right; models that cannot do that get one plain padded batch."""
    device = input_device(model)
    try:
        out = model(input_ids=torch.tensor([seqs[0][:shared]], device=device), use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(len(seqs))
        ids, mask = _pad_right([s[shared:] for s in seqs], pad, prefix=shared)
        rest = model(input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache,
                     use_cache=True).logits
        logits = torch.cat([out.logits[:, -1:].to(rest.device).expand(len(seqs), -1, -1), rest[:, :-1]], 1)
    except (TypeError, AttributeError, NotImplementedError):
        ids, mask = _pad_right(seqs, pad)
        keep = torch.arange(shared - 1, ids.shape[1] - 1)
        logits = _logits(model, ids.to(device), mask.to(device), keep)
    return logits.float().log_softmax(-1)


@torch.inference_mode()
def choice_loglikelihoods(model, tokenizer, question: str, choices: list[str]) -> list[float]:
    """Summed log-likelihood of the tokens of each ``" " + choice`` after ``"Question: ...\nAnswer:"``."""
    context = f"Question: {question}\nAnswer:"
    pairs = [_choice_tokens(tokenizer, context, " " + c) for c in choices]
    seqs = [c + k for c, k in pairs]
    shared = min(len(c) for c, _ in pairs)
    while shared > 1 and any(s[:shared] != seqs[0][:shared] for s in seqs):
        shared -= 1
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    logp = _choice_logprobs(model, seqs, shared, pad)       # index j predicts the token at shared + j
    scores = []
    for i, (c, k) in enumerate(pairs):
        pos = torch.arange(len(c), len(c) + len(k), device=logp.device) - shared
        scores.append(logp[i, pos, torch.tensor(k, device=logp.device)].sum().item())
    return scores


def mc_accuracy(model, tokenizer, items, *, limit: int | None = None) -> AccuracyResult:
    """Zero-shot multiple-choice accuracy, lm-eval style: acc (raw log-likelihood) and acc_norm (per character).

    ``accuracy`` is acc_norm; ``accuracy_raw`` is acc. Ties go to the first choice (as ``argmax`` does).
    """
    items = list(items)[:limit] if limit is not None else list(items)
    correct = correct_raw = nonfinite = 0
    for item in items:
        ll = choice_loglikelihoods(model, tokenizer, item["question"], item["choices"])
        nonfinite += int(not all(math.isfinite(x) for x in ll))
        norm = [s / max(len(c), 1) for s, c in zip(ll, item["choices"])]
        correct_raw += int(max(range(len(ll)), key=ll.__getitem__) == item["answer"])
        correct += int(max(range(len(norm)), key=norm.__getitem__) == item["answer"])
    n = len(items)
    return AccuracyResult(accuracy=correct / n if n else math.nan, n=n, correct=correct,
                          accuracy_raw=correct_raw / n if n else math.nan, correct_raw=correct_raw,
                          nonfinite=nonfinite)


@torch.inference_mode()
def kv_cache_perplexity(model, tokenizer, kv_cache: str = "default", *, context_tokens: int = 1024,
                        scored_tokens: int = 256, chunk: int = 8, texts: list[str] | None = None) -> PerplexityResult:
    """Perplexity of tokens decoded *through a KV cache*: the cost of quantizing it (``kv_cache`` as in
    ``playground.engine.KV_CACHE_OPTIONS``).

    The first ``context_tokens`` of the English text (FLORES+) are prefilled into a fresh cache (a quantized
    cache quantizes all of them), then the next ``scored_tokens`` are fed ``chunk`` at a time, as decoding does,
    each scored against the logits of the step before it. With the same arguments, "default" and a quantized
    cache score the very same tokens, so the difference of their perplexities is the cost of the quantization.
    """
    from playground.engine import make_kv_cache
    if context_tokens < 1 or scored_tokens < 1 or chunk < 1:
        raise ValueError(f"need context_tokens, scored_tokens, chunk >= 1, got {context_tokens=} "
                         f"{scored_tokens=} {chunk=}")
    text = "\n\n".join(texts if texts is not None else load_lines(ENGLISH_FILE))
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    bos = _bos_id(tokenizer)
    if bos is not None:
        ids = torch.cat([torch.tensor([bos]), ids])
    if len(ids) < context_tokens + scored_tokens:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than {context_tokens} + {scored_tokens}")
    ids = ids[:context_tokens + scored_tokens].unsqueeze(0).to(input_device(model))
    cache = make_kv_cache(model, kv_cache)
    out = model(input_ids=ids[:, :context_tokens], past_key_values=cache, use_cache=True, logits_to_keep=1)
    past, last = out.past_key_values, out.logits[:, -1]
    total_nll = 0.0
    for begin in range(context_tokens, context_tokens + scored_tokens, chunk):
        x = ids[:, begin:min(begin + chunk, context_tokens + scored_tokens)]
        out = model(input_ids=x, past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = torch.cat([last, out.logits[0, :-1]])   # the logits that predict each token of x
        total_nll += F.cross_entropy(logits.float(), x[0].to(logits.device), reduction="sum").item()
        last = out.logits[0, -1:]
    nll = total_nll / scored_tokens
    return PerplexityResult(ppl=math.inf if nll > 709 else math.exp(nll), nll=nll, tokens=scored_tokens)


def evaluate_quality(lm, *, ppl_en_tokens: int = 4096, ppl_zh_tokens: int = 2048, mc_items: int = 100,
                     mc_set: str = "arc_easy", max_length: int = 512, stride: int = 256) -> dict:
    """Quality columns for one loaded model (a ``LoadedModel`` or anything with ``.model`` and ``.tokenizer``).

    Returns ``perplexity`` (English, FLORES+), ``perplexity_zh`` (HSK sentences), ``accuracy`` (acc_norm on
    ``mc_set``: ARC-Easy by default, as 135M-270M models score at chance on ARC-Challenge), ``accuracy_raw``
    (acc), ``quality_tokens`` (tokens scored for perplexity, English + Chinese),
    ``quality_items`` (MC items scored), ``accuracy_nonfinite`` (items with a NaN/inf score: a model that
    overflows) and ``quality_s`` (seconds spent). A count of 0 skips that metric
    (its column is None). Defaults take about 30 s for a 135M model on 2 CPU cores.
    """
    if mc_set not in MC_SETS:
        raise ValueError(f"mc_set must be one of {sorted(MC_SETS)}, got {mc_set!r}")
    t0 = time.perf_counter()
    model, tokenizer = lm.model, lm.tokenizer
    lock = getattr(lm, "lock", None) or nullcontext()
    row = {"perplexity": None, "perplexity_zh": None, "accuracy": None, "accuracy_raw": None,
           "quality_tokens": 0, "quality_items": 0, "accuracy_nonfinite": 0}
    with lock:
        for column, path, budget in (("perplexity", ENGLISH_FILE, ppl_en_tokens),
                                     ("perplexity_zh", CHINESE_FILE, ppl_zh_tokens)):
            if budget:
                res = perplexity(model, tokenizer, list(load_lines(path)), max_length=max_length,
                                 stride=stride, max_tokens=budget)
                row[column] = res.ppl
                row["quality_tokens"] += res.tokens
        if mc_items:
            acc = mc_accuracy(model, tokenizer, load_mc_items(MC_SETS[mc_set]), limit=mc_items)
            row.update(accuracy=acc.accuracy, accuracy_raw=acc.accuracy_raw, quality_items=acc.n,
                       accuracy_nonfinite=acc.nonfinite)
    row["quality_s"] = round(time.perf_counter() - t0, 2)
    return row
