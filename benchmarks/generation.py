"""Prompts of an exact length and the two generation paths the engine does not cover.

* prompts come from text shipped in the repo (``playground/data/calibration.txt`` when present, else
  ``benchmarks/data/prompt_text.txt``), repeated if needed and cut to exactly ``prompt_tokens`` tokens; each row of
  a batch starts at a different offset so rows differ but have the same length (no padding);
* ``batched_greedy``: prefill + one token at a time with the KV cache for batch sizes > 1 (the engine's
  ``stream_reply`` is batch 1), timed by a ``LatencyTracker``; through the fast decoder the greedy choice (and
  the masking of stop tokens) happens inside the compiled step;
* ``bare_generate``: a plain ``model.generate`` with no trackers, the yardstick for the harness's own overhead.
"""
from __future__ import annotations

import hashlib
from contextlib import nullcontext
from pathlib import Path

from playground.engine import eos_token_ids, input_device

ROOT = Path(__file__).resolve().parents[1]
PROMPT_FILES = (ROOT / "playground" / "data" / "calibration.txt", Path(__file__).parent / "data" / "prompt_text.txt")


def load_prompt_text() -> tuple[str, str, str]:
    """(text, path relative to the repo, sha256 prefix) of the prompt source."""
    for path in PROMPT_FILES:
        if path.exists() and path.stat().st_size > 1000:
            data = path.read_bytes()
            return data.decode("utf-8"), str(path.relative_to(ROOT)), hashlib.sha256(data).hexdigest()[:12]
    raise FileNotFoundError(f"no prompt text found (looked for {', '.join(str(p) for p in PROMPT_FILES)})")


def make_prompt_ids(tokenizer, prompt_tokens: int, batch_size: int = 1) -> list[list[int]]:
    """``batch_size`` lists of exactly ``prompt_tokens`` token ids cut from the shipped text."""
    text = load_prompt_text()[0]
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if not ids:
        raise ValueError("the tokenizer turned the prompt text into no tokens")
    stride = max(1, len(ids) // max(batch_size, 1))
    need = prompt_tokens + stride * (batch_size - 1)
    ids = ids * (need // len(ids) + 1)
    return [ids[i * stride: i * stride + prompt_tokens] for i in range(batch_size)]


def stop_token_ids(model, tokenizer) -> list[int]:
    """Ids that would end a reply; masked while generating so every run makes exactly ``new_tokens`` tokens."""
    return sorted(eos_token_ids(model, tokenizer))


def batched_greedy(model, prompts: list[list[int]], new_tokens: int, stop_ids: list[int], tracker,
                   fast=None) -> list[list[int]]:
    """Greedy decode of a batch of equal-length prompts; calls ``tracker.token()`` after each step.
    ``fast``: a ``playground.fast_decode.FastDecoder`` (static cache, compiled step) instead of eager steps, its
    cache held through ``FastDecoder.session`` for the whole batch. A measurement never falls back to eager: a
    length the decoder cannot take raises ``FastDecodeUnsupported``, a cache in use a RuntimeError."""
    import torch

    from playground.fast_decode import BUSY_NOTE, FastDecodeUnsupported, last_logits_kwargs
    dev = input_device(model)
    keep = last_logits_kwargs(model)
    held = fast.session(len(prompts[0]) + new_tokens, batch=len(prompts)) if fast is not None else nullcontext()
    with held as session, (torch.no_grad() if fast is not None else torch.inference_mode()):
        if session is not None and not session.fast:
            if session.note == BUSY_NOTE:
                raise RuntimeError("the fast decoder's cache for this batch is busy")
            raise FastDecodeUnsupported(session.note)
        return _greedy_steps(model, session, torch.tensor(prompts, device=dev), new_tokens, stop_ids, tracker, keep)


def _greedy_steps(model, session, ids, new_tokens, stop_ids, tracker, keep) -> list[list[int]]:
    """``session``: a ``FastSession`` with its cache, or None (eager steps with the dynamic cache). With a session,
    the steps after the prefill choose their token inside the compiled graph and run one step ahead of the host
    (``FastSession.queue_greedy``): step n + 1 is queued before token n is waited for."""
    import torch
    past, out_ids = None, []

    def host_choice(logits):
        if stop_ids:
            logits[:, stop_ids] = -float("inf")
        return torch.argmax(logits, dim=-1, keepdim=True)

    def eager_step(ids, past):
        out = model(input_ids=ids, past_key_values=past, use_cache=True, **keep)
        return host_choice(out.logits[:, -1, :]), out.past_key_values
    if session is not None:
        ids = host_choice(session.prefill(ids))
    else:
        ids, past = eager_step(ids, past)
    tracker.token()
    out_ids.append(ids)
    if session is not None:
        bias = session.decoder.bias(stop_ids, ids.device) if stop_ids else None
        queued = session.queue_greedy(ids, bias) if new_tokens > 1 else None
        for step in range(1, new_tokens):
            ahead = session.queue_greedy(queued.ids, bias) if step + 1 < new_tokens else None
            queued.read()
            tracker.token(synced=True)
            out_ids.append(queued.ids)
            queued = ahead
    else:
        for _ in range(1, new_tokens):
            ids, past = eager_step(ids, past)
            tracker.token()
            out_ids.append(ids)
    return torch.cat(out_ids, dim=1).tolist()


def bare_generate(model, prompt: list[int], new_tokens: int, stop_ids: list[int], pad_id,
                  static_cache: bool = False) -> float:
    """Seconds for a plain greedy ``model.generate`` of exactly ``new_tokens`` tokens (no trackers).
    ``static_cache``: transformers' own static cache + compiled forward, the yardstick of the fast decoder."""
    import time

    import torch
    from transformers import GenerationConfig

    dev = input_device(model)
    cfg = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           eos_token_id=stop_ids or None, pad_token_id=pad_id,
                           **({"cache_implementation": "static"} if static_cache else {}))
    with (torch.no_grad() if static_cache else torch.inference_mode()):
        x = torch.tensor([prompt], device=dev)
        mask = torch.ones_like(x)
        _sync(dev)
        t0 = time.perf_counter()
        out = model.generate(input_ids=x, attention_mask=mask, generation_config=cfg)
        _sync(dev)
        elapsed = time.perf_counter() - t0
    if out.shape[1] - len(prompt) != new_tokens:
        raise RuntimeError(f"model.generate made {out.shape[1] - len(prompt)} tokens instead of {new_tokens}")
    return elapsed


def bare_fast_loop(fast, model, prompt: list[int], new_tokens: int, stop_ids: list[int]) -> float:
    """Seconds for the fast decoder's own loop (prefill + compiled steps + argmax), without the engine around it:
    the yardstick of the harness in fast mode. (transformers' ``generate(cache_implementation="static")`` is no
    yardstick here: on sliding-window configs such as Mistral its cache recompiles the model at every token.)"""
    import time

    dev = input_device(model)

    class _Null:
        def token(self, synced=False):
            pass
    _sync(dev)
    t0 = time.perf_counter()
    out = batched_greedy(model, [prompt], new_tokens, stop_ids, _Null(), fast=fast)
    _sync(dev)
    elapsed = time.perf_counter() - t0
    if len(out[0]) != new_tokens:
        raise RuntimeError(f"the fast loop made {len(out[0])} tokens instead of {new_tokens}")
    return elapsed


def _sync(dev) -> None:
    import torch
    if getattr(dev, "type", str(dev)).startswith("cuda"):
        torch.cuda.synchronize(dev)
