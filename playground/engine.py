"""Chat and completion generation with streaming, cancel and per-reply stats.

A small ``@torch.inference_mode()`` loop (prefill, then one token at a time with the KV cache) rather than
``generate`` in a thread: the loop runs in the caller's thread, so a consumer that stops iterating (Gradio's stop
button, Ctrl+C in the CLI) stops generation at the next token, every token's latency is measured exactly, and
non-finite logits are caught at the step that produced them.
"""
from __future__ import annotations

import math
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

from .errors import GenerationError, InvalidParameterError, PromptTooLongError, is_out_of_memory
from .fast_decode import last_logits_kwargs, reply_session
from .manager import LoadedModel, release_memory
from .memory import PeakMemory

MAX_NEW_TOKENS_LIMIT = 8192
# KV-cache storage: "default" keeps keys/values in the model's dtype; the others are transformers' QuantizedCache
# (KIVI-style: per-channel groups of 64, the newest 128 tokens kept in full precision) as (backend, bits)
KV_CACHE_OPTIONS = {"default": None, "int8": ("hqq", 8), "int4": ("quanto", 4), "int2": ("quanto", 2)}
# A prompt longer than this is read in chunks of it, one forward pass each: Stop acts between two chunks (and the
# model's lock is let go between them), so a cancelled 20k-token prompt holds the model for one chunk at most.
PREFILL_CHUNK_TOKENS = 512


@dataclass(frozen=True)
class GenerationParams:
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    seed: int | None = None
    greedy: bool = False
    min_new_tokens: int = 0          # the benchmark sets min == max to time a fixed length
    decode: str = "auto"             # "auto": fast when the model has a fast decoder; "fast"; "eager"
    kv_cache: str = "default"        # KV_CACHE_OPTIONS: "default", or a quantized cache (always decodes eagerly)

    def __post_init__(self):
        def bad(msg):
            raise InvalidParameterError(msg)
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            bad(f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS_LIMIT}], got {self.max_new_tokens!r}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            bad(f"min_new_tokens must be in [0, max_new_tokens={self.max_new_tokens}], got {self.min_new_tokens}")
        if not (0.0 <= self.temperature <= 5.0):
            bad(f"temperature must be in [0, 5], got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            bad(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            bad(f"top_k must be a non-negative integer (0 = off), got {self.top_k!r}")
        if not (0.5 <= self.repetition_penalty <= 3.0):
            bad(f"repetition_penalty must be in [0.5, 3], got {self.repetition_penalty}")
        if self.decode not in ("auto", "fast", "eager"):
            bad(f"decode must be auto, fast or eager, got {self.decode!r}")
        if self.kv_cache not in KV_CACHE_OPTIONS:
            bad(f"kv_cache must be one of {', '.join(KV_CACHE_OPTIONS)}, got {self.kv_cache!r}")
        if self.seed is not None and not (0 <= int(self.seed) < 2 ** 63):
            bad(f"seed must be a non-negative integer, got {self.seed}")

    @property
    def sampling(self) -> bool:
        return not self.greedy and self.temperature > 0


@dataclass
class ReplyStats:
    model: str
    variant: str
    device: str
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_s: float = 0.0           # prompt in → first new token out (prefill + first sample)
    decode_tok_s: float = 0.0     # tokens after the first / time after the first
    total_s: float = 0.0
    itl_s: list[float] = field(default_factory=list, repr=False)  # inter-token latencies
    peak_mem_gb: float = 0.0
    mem_kind: str = ""            # "cuda allocator" or "process RSS"
    mode: str = "chat"            # "chat" (template) or "completion" (no template)
    finish_reason: str = ""       # "eos", "length", "stopped"
    decode_mode: str = "eager"    # or the fast decoder's mode ("compiled + CUDA graphs", …)
    kv_cache: str = "default"     # GenerationParams.kv_cache
    kv_cache_gb: float = 0.0      # bytes of the KV cache's tensors at the end of the reply (quantized + residual)
    notes: list[str] = field(default_factory=list)

    def badge(self) -> str:
        kv = f" · KV {self.kv_cache} {self.kv_cache_gb * 1000:.1f} MB" if self.kv_cache != "default" else ""
        # decode speed needs two tokens (the first one's time is the TTFT): one token has none, not "0.0"
        speed = f"{self.decode_tok_s:.1f} tok/s" if self.new_tokens > 1 else "— tok/s"
        return (f"TTFT {self.ttft_s * 1000:.0f} ms · {speed} · {self.new_tokens} tokens · "
                f"peak {self.peak_mem_gb:.2f} GB ({self.mem_kind}) · {self.variant}{kv}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("itl_s")
        return d


@dataclass
class StreamEvent:
    text: str                      # the whole reply so far
    delta: str                     # what this event added
    done: bool = False
    stats: ReplyStats | None = None  # set on the final event


def build_prompt(lm: LoadedModel, messages: list[dict], system: str | None) -> tuple[list[int], str]:
    """Token ids of the conversation and the mode used. ``messages`` are {"role", "content"} dicts; when the last
    one is the assistant's, the model continues that reply (a reply cut at its token limit: Continue)."""
    tok = lm.tokenizer
    if not messages or messages[-1].get("role") not in ("user", "assistant"):
        raise InvalidParameterError("the conversation must end with a user message (or a reply to continue)")
    continuing = messages[-1]["role"] == "assistant"
    if not str(messages[-1].get("content", "")).strip():
        raise InvalidParameterError("the reply to continue is empty" if continuing else
                                    "the message is empty: type something to send")
    if lm.has_chat_template:
        conv = ([{"role": "system", "content": system}] if system and system.strip() else []) + messages
        ids = tok.apply_chat_template(conv, add_generation_prompt=not continuing, continue_final_message=continuing,
                                      tokenize=True, return_dict=False)
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return list(ids), "chat"
    # Completion mode: a base model continues plain text; earlier turns become plain text too.
    parts = [system.strip()] if system and system.strip() else []
    parts += [str(m["content"]) for m in messages]
    ids = tok("\n\n".join(parts), add_special_tokens=True)["input_ids"]
    return list(ids), "completion"


def eos_token_ids(model, tokenizer) -> set[int]:
    """The end-of-sequence ids of the model's generation config and of its tokenizer."""
    ids = set()
    for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(src, int):
            ids.add(src)
        elif src:
            ids.update(int(i) for i in src)
    return ids


def _stop_ids(lm: LoadedModel) -> set[int]:
    """End-of-turn token ids, computed once per loaded model (``get_vocab`` is slow on big vocabularies)."""
    cached = getattr(lm, "_stop_ids", None)
    if cached is not None:
        return cached
    ids = eos_token_ids(lm.model, lm.tokenizer)
    vocab = lm.tokenizer.get_vocab()
    for special in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|endoftext|>"):
        if special in vocab:
            ids.add(int(vocab[special]))
    lm._stop_ids = ids
    return ids


def _logits_processors(params: GenerationParams):
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)
    procs = LogitsProcessorList()
    if params.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.sampling:
        procs.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k > 0:
            procs.append(TopKLogitsWarper(params.top_k))
        if params.top_p < 1.0:
            procs.append(TopPLogitsWarper(params.top_p))
    return procs


class TokenChooser:
    """The next token from the last position's logits, with at most one device→host sync per token: the stop
    tokens masked before ``min_new_tokens``, repetition penalty, temperature / top-k / top-p, sampling with the
    reply's own seeded generator, or the greedy argmax (NaN/inf checked in the same sync)."""

    def __init__(self, lm: LoadedModel, params: GenerationParams, stop_list: list[int], ids_device):
        import torch
        self.lm, self.params, self.stop_list, self.ids_device = lm, params, stop_list, ids_device
        self.procs = _logits_processors(params)
        self.gen = None
        if params.sampling:
            self.gen = torch.Generator(device="cpu")
            self.gen.manual_seed(int(params.seed) if params.seed is not None else int(time.time_ns() % 2 ** 63))

    @property
    def greedy_on_device(self) -> bool:
        """The choice is a plain argmax (stop tokens masked at most): the compiled step can make it."""
        return not self.params.sampling and not len(self.procs)

    def choose(self, logits, step: int, all_ids):
        """(next token id, its ids tensor [1, 1] on the input device, for the next forward)."""
        import torch
        params = self.params
        if params.sampling or len(self.procs):
            logits = logits.float()
            if not torch.isfinite(logits).all():   # before the -inf of the stop tokens below
                raise _non_finite(self.lm, step)
        if step < params.min_new_tokens and self.stop_list:
            logits[:, self.stop_list] = -float("inf")
        if len(self.procs):
            logits = self.procs(all_ids, logits)
        if params.sampling:
            probs = torch.softmax(logits, dim=-1).cpu()
            next_id = int(torch.multinomial(probs, 1, generator=self.gen)[0, 0])
            return next_id, torch.tensor([[next_id]], device=self.ids_device)
        # one device→host sync per token: the max (NaN/inf propagate into it) and its index together
        best = logits.max(dim=-1)
        top, idx = torch.stack([best.values.float(), best.indices.float()], dim=1)[0].tolist()
        if not math.isfinite(top):
            raise _non_finite(self.lm, step)
        return int(idx), best.indices.view(1, 1)     # stays on the device: no host→device copy per token


class GreedyAhead:
    """Greedy decoding through the fast decoder's compiled step, one step ahead of the host: each step is queued
    (``FastSession.queue_greedy``) before the previous one's token is read, so the host's work per token (the
    read, text, stop checks, streaming) overlaps the device's next step instead of leaving the GPU idle. The stop
    tokens are banned (a -inf bias in the graph) for the steps before ``min_new_tokens``. A step queued past the
    reply's end (a stop token, Stop) is one step of wasted work in a cache that is reset before its next use."""

    def __init__(self, session, chooser: TokenChooser):
        self.session = session
        masked = chooser.stop_list and chooser.params.min_new_tokens > 1
        self.bias = session.decoder.bias(chooser.stop_list, chooser.ids_device) if masked else None
        self.min_new = chooser.params.min_new_tokens

    def queue(self, lm: LoadedModel, ids, step: int):
        with lm.lock:
            if lm.model is None:
                raise GenerationError(f"{lm.label} was unloaded during the reply")
            return self.session.queue_greedy(ids, self.bias if step < self.min_new else None)


class IncrementalDetokenizer:
    """Text of the new tokens as they come; an incomplete multi-byte character (decoded as U+FFFD) is held back
    until the token that completes it."""

    def __init__(self, tokenizer):
        self.tokenizer, self.ids, self.text, self._upto = tokenizer, [], "", 0

    def push(self, token_id: int) -> str | None:
        """The text this token adds, or None while a character is incomplete."""
        self.ids.append(token_id)
        delta = self.tokenizer.decode(self.ids[self._upto:], skip_special_tokens=True)
        if delta.endswith("\ufffd"):
            return None
        self.text += delta
        self._upto = len(self.ids)
        return delta


class ReplyTimer:
    """Time to first token and the gaps between later tokens, into the reply's stats."""

    def __init__(self, stats: ReplyStats, t_start: float):
        self.stats, self.t_start, self._last = stats, t_start, t_start

    def token(self, step: int) -> None:
        now = time.perf_counter()
        if step == 0:
            self.stats.ttft_s = now - self.t_start
        else:
            self.stats.itl_s.append(now - self._last)
        self._last = now

    def finish(self, new_tokens: int) -> None:
        s = self.stats
        s.new_tokens = new_tokens
        s.total_s = time.perf_counter() - self.t_start
        decode_time = sum(s.itl_s)
        s.decode_tok_s = (len(s.itl_s) / decode_time) if decode_time > 0 else 0.0


def _start_stats(lm: LoadedModel, params: GenerationParams, n_prompt: int, mode: str) -> tuple[ReplyStats, int]:
    """The reply's stats and how many tokens it may make (the context length caps ``max_new_tokens``)."""
    ctx = lm.context_length
    if n_prompt >= ctx:
        raise PromptTooLongError(
            f"the prompt is {n_prompt} tokens but {lm.name} has a context of {ctx} tokens: shorten it "
            f"or clear the conversation")
    stats = ReplyStats(model=lm.name, variant=lm.variant, device=lm.device, prompt_tokens=n_prompt, mode=mode,
                       kv_cache=params.kv_cache)
    max_new = params.max_new_tokens
    if n_prompt + max_new > ctx:
        max_new = ctx - n_prompt
        stats.notes.append(f"max_new_tokens cut to {max_new} to fit the {ctx}-token context")
    if mode == "completion":
        stats.notes.append("no chat template: completion mode (the model continues the text)")
    return stats, max_new


def prefill_chunks(n_tokens: int, chunk: int | None = None) -> list[tuple[int, int]]:
    """(start, end) of each chunk of an ``n_tokens`` prompt (``PREFILL_CHUNK_TOKENS`` each unless ``chunk`` says);
    one chunk when it fits in one."""
    chunk = chunk or PREFILL_CHUNK_TOKENS
    return [(start, min(start + chunk, n_tokens)) for start in range(0, n_tokens, chunk)] or [(0, 0)]


def prefill(lm: LoadedModel, model, session, ids, past=None, keep: dict | None = None,
            cancel: threading.Event | None = None, on_prefill: Callable[[int, int], None] | None = None):
    """Read the prompt ``ids`` [1, n] into the cache in chunks (``prefill_chunks``), holding the model's lock for
    one chunk at a time. Returns (the last position's logits, the cache), or (None, the cache) when ``cancel`` was
    set between two chunks. The model finds each chunk's positions from the cache's length (DynamicCache,
    QuantizedCache and the fast decoder's StaticCache all count the tokens they hold). ``session`` is the reply's
    ``FastSession``: its static cache when it has one, else ``past`` (None: the model makes a DynamicCache)."""
    n, keep = ids.shape[1], keep or {}
    logits = None
    for k, (start, end) in enumerate(prefill_chunks(n)):
        if k and cancel is not None and cancel.is_set():
            return None, past
        chunk = ids if end - start == n else ids[:, start:end]
        logits, past = forward_once(lm, model, session, chunk, past, keep, prefill=True)
        if on_prefill is not None:
            on_prefill(end, n)
    return logits, past


def forward_once(lm: LoadedModel, model, session, ids, past, keep: dict, prefill: bool):
    """One forward pass under the model's lock: (logits of the last position, cache). Through the fast decoder's
    static cache when the session has one (its eager prefill, or its compiled one-token step), else ``past``."""
    with lm.lock:
        if lm.model is None:
            raise GenerationError(f"{lm.label} was unloaded during the reply")
        if session.fast:
            return (session.prefill(ids) if prefill else session.step(ids)), past
        out = model(input_ids=ids, past_key_values=past, use_cache=True, **keep)
        return out.logits[:, -1, :], out.past_key_values


def stream_reply(lm: LoadedModel, messages: list[dict], system: str | None = None,
                 params: GenerationParams | None = None, cancel: threading.Event | None = None,
                 prompt_ids: list[int] | None = None,
                 on_prefill: Callable[[int, int], None] | None = None) -> Iterator[StreamEvent]:
    """Yield the reply as it grows; the last event has ``done=True`` and the stats.

    Prefill (in chunks of ``PREFILL_CHUNK_TOKENS``; ``on_prefill(tokens done, total)`` after each) and decode
    through the fast decoder (static cache, compiled step) or eagerly, one token a step: ``TokenChooser`` picks
    it, ``ReplyTimer`` times it, ``IncrementalDetokenizer`` turns it into text.
    Stopping: set ``cancel`` (acts between two prefill chunks, or before the next token) or simply stop iterating
    (``close()`` the generator); the model stays usable.
    """
    import torch

    t_start = time.perf_counter()     # TTFT counts everything from the request on, templating included
    params = params or GenerationParams()
    model, tokenizer = lm.model, lm.tokenizer   # keep our own references: an unload mid-reply can't pull them
    if model is None or tokenizer is None:
        raise GenerationError(f"{lm.label} was unloaded; load it again")
    if prompt_ids is None:
        prompt_ids, mode = build_prompt(lm, messages, system)
    else:
        mode = "raw"
    n_prompt = len(prompt_ids)
    stats, max_new = _start_stats(lm, params, n_prompt, mode)
    stop_ids = _stop_ids(lm)
    ids_device = input_device(model)
    chooser = TokenChooser(lm, params, sorted(stop_ids), ids_device)
    keep = last_logits_kwargs(model)
    detok, timer = IncrementalDetokenizer(tokenizer), ReplyTimer(stats, t_start)
    peak = PeakMemory(lm.device)
    stats.finish_reason = "length"
    # the fast decoder's static cache for this reply (given back when the block ends, however it ends), or eager
    with reply_session(lm, n_prompt + max_new, params.decode, params.kv_cache) as session:
        if session.note:
            stats.notes.append(session.note)
        stats.decode_mode = session.mode
        # None (a DynamicCache on the first call) or a quantized cache when decoding eagerly
        cache = session.cache if session.fast else make_kv_cache(model, params.kv_cache)
        # greedy through the compiled step: the token is chosen in the graph, one step ahead of the host
        ahead = GreedyAhead(session, chooser) if session.fast and chooser.greedy_on_device else None

        # no_grad for the compiled step (its graphs are built under it), inference_mode for the eager loop. Grad
        # mode is per thread and Gradio may run each next() of this generator on another worker thread: the mode
        # is entered for each step's tensor work and left before the yield (once around the loop, a step on
        # another thread ran with grad on: "Inference tensors cannot be saved for backward", and the first thread
        # was left in inference mode).
        def grad_ctx():
            return torch.no_grad() if session.fast else torch.inference_mode()
        with peak:
            ids = torch.tensor([prompt_ids], device=ids_device)
            all_ids = ids
            past = cache
            try:
                for step in range(max_new):
                    with grad_ctx():
                        if cancel is not None and cancel.is_set():
                            stats.finish_reason = "stopped"
                            break
                        if step == 0:
                            logits, past = prefill(lm, model, session, ids, past, keep, cancel, on_prefill)
                            if logits is None:       # Stop between two chunks of the prompt
                                stats.finish_reason = "stopped"
                                break
                            next_id, ids = chooser.choose(logits, step, all_ids)
                            queued = ahead.queue(lm, ids, 1) if ahead and max_new > 1 else None
                        elif ahead:
                            # the step after this one is queued before this one's token is waited for
                            after = ahead.queue(lm, queued.ids, step + 1) if step + 1 < max_new else None
                            (next_id,), (top,) = queued.read()
                            if not math.isfinite(top):
                                raise _non_finite(lm, step)
                            ids, queued = queued.ids, after
                        else:
                            logits, past = forward_once(lm, model, session, ids, past, keep, prefill=False)
                            next_id, ids = chooser.choose(logits, step, all_ids)
                        timer.token(step)
                        if next_id in stop_ids and step >= params.min_new_tokens:
                            stats.finish_reason = "eos"
                            break
                        if params.repetition_penalty != 1.0:
                            all_ids = torch.cat([all_ids, ids], dim=1)
                    delta = detok.push(next_id)
                    if delta is not None:
                        yield StreamEvent(text=detok.text, delta=delta)
                stats.kv_cache_gb = kv_cache_bytes(cache if session.fast else past) / 1e9
            except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):   # on CPU torch's allocator raises a RuntimeError (ENOMEM)
                    raise
                # the finished frames of the traceback (prefill's, the model's) still hold the cache of the chunks
                # read so far and the activations; the GenerationError keeps ``exc`` as its cause, so clear them
                traceback.clear_frames(exc.__traceback__)
                del past
                release_memory()
                raise GenerationError(
                    f"out of memory while generating with {lm.label} ({n_prompt} prompt tokens, {len(detok.ids)} "
                    f"new): use fewer tokens, a smaller variant, or unload other models") from exc
            except GeneratorExit:
                stats.finish_reason = "stopped"
                raise
    stats.decode_mode = session.mode      # a failed compile may have changed it mid-reply
    timer.finish(len(detok.ids))
    stats.peak_mem_gb, stats.mem_kind = peak.peak_gb, peak.kind
    yield StreamEvent(text=detok.text, delta="", done=True, stats=stats)


def _non_finite(lm: LoadedModel, step: int) -> GenerationError:
    return GenerationError(
        f"{lm.name} in {lm.variant} produced NaN/inf logits at new token {step + 1}: this "
        f"variant overflows for this model (try bf16 or fp32)")


def make_kv_cache(model, kv_cache: str):
    """A fresh cache for one reply: None for "default" (the model makes its DynamicCache), else a QuantizedCache."""
    spec = KV_CACHE_OPTIONS.get(kv_cache, "?")
    if spec == "?":
        raise InvalidParameterError(f"kv_cache must be one of {', '.join(KV_CACHE_OPTIONS)}, got {kv_cache!r}")
    if spec is None:
        return None
    backend, nbits = spec
    from transformers import QuantizedCache
    try:
        return QuantizedCache(backend=backend, config=model.config, nbits=nbits)
    except ImportError as exc:
        pkg = "optimum-quanto" if backend == "quanto" else "hqq"
        raise InvalidParameterError(f"kv_cache={kv_cache} needs the package {pkg} (pip install -r requirements.txt): "
                                    f"{exc}") from None
    except ValueError as exc:   # e.g. sliding-window layers (Gemma 3, Mistral): QuantizedCache is full attention only
        raise InvalidParameterError(f"kv_cache={kv_cache} is not available for this model: {exc}") from None


def kv_cache_bytes(cache) -> int:
    """Bytes held by a cache's key/value tensors (quantized data, scales and zero points, full-precision residual)."""
    if cache is None:
        return 0
    total, seen = 0, set()

    def add(obj):
        nonlocal total
        if obj is None or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, (list, tuple)):
            for o in obj:
                add(o)
        elif isinstance(obj, dict):
            for o in obj.values():
                add(o)
        elif hasattr(obj, "__tensor_flatten__") and type(obj).__name__ != "Tensor":   # quanto's tensor subclasses
            names, _ = obj.__tensor_flatten__()
            for n in names:
                add(getattr(obj, n))
        elif hasattr(obj, "element_size") and hasattr(obj, "numel"):
            total += obj.numel() * obj.element_size()

    for layer in getattr(cache, "layers", []) or []:
        for name in ("keys", "values", "_quantized_keys", "_quantized_values"):
            add(getattr(layer, name, None))
    return total


def input_device(model):
    """Where input ids must go: the device of the input embeddings (device_map / quantized models)."""
    try:
        return model.get_input_embeddings().weight.device
    except Exception:  # pragma: no cover - exotic models
        return next(model.parameters()).device


def chat(lm: LoadedModel, messages: list[dict], system: str | None = None,
         params: GenerationParams | None = None) -> tuple[str, ReplyStats]:
    """Non-streaming convenience: the whole reply and its stats."""
    last = None
    for last in stream_reply(lm, messages, system, params):
        pass
    assert last is not None and last.done
    return last.text, last.stats
