"""Fast decoding: a static KV cache and a compiled one-token decode step (CUDA graphs on a GPU).

Eager decoding of a 7B model at batch size 1 is bound by Python and kernel launches, not by the GPU: each token
launches hundreds of small kernels. Here the decode step runs as one compiled graph over a KV cache of fixed shape
(transformers' ``StaticCache``), replayed with CUDA graphs (``mode="reduce-overhead"``), as gpt-fast does.

* Cache lengths come in buckets (powers of two, at least ``MIN_BUCKET`` on CUDA, ``MIN_BUCKET_CPU`` on CPU where
  attending over empty cache slots costs real time): a new ``max_new_tokens`` or prompt length
  inside a bucket reuses the compiled step; only a new bucket (or batch size) compiles again.
* The prefill runs eagerly (prompt lengths vary); only the decode step is compiled.
* ``compiles`` counts the graphs built (a counting backend around inductor), so tests can assert "no recompile".
* One cache per (batch, bucket), owned by one reply at a time; a second concurrent reply on the same model does not
  wait for it: ``acquire`` returns None and the caller decodes eagerly.
* ``fuse=True`` (the default) first fuses each decoder layer's q/k/v and gate/up projections where they are plain
  Linears (``playground.fused_projections``): one product instead of three (two), on views of the same bytes; the
  fusion is on only inside the decoder's prefill and compiled step, so eager replies and transformers' own
  ``generate`` run the model as loaded. ``info.fused`` (and ``mode``) say whether it applied.
* Anything that cannot be compiled (some quantized kernels) falls back to ``fullgraph=False`` and then to the
  static cache without compilation; ``mode`` says what runs.

The whole lifecycle lives here: ``enable_fast_decode(lm)`` builds and warms up a model's decoder (on failure the
model stays eager, with a note), ``reply_session(lm, needed, decode, kv_cache)`` / ``FastDecoder.session(needed)``
hand one reply the static cache or say why it decodes eagerly (and give the cache back however the reply ends),
``forget_compiled_graphs`` drops compiled steps after an unload. ``playground.manager`` re-exports the first and
the last.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

MIN_BUCKET = 1024
MIN_BUCKET_CPU = 128
RECOMPILE_LIMIT = 64
BUSY_NOTE = "the fast decoder is busy with another reply on this model: this one decodes eagerly"
NOT_STARTED_NOTE = "fast decode could not start: eager decoding (see the model's load notes)"


def bucket_length(needed: int, context: int | None = None, min_bucket: int = MIN_BUCKET) -> int:
    """Smallest power of two ≥ ``needed`` (and ≥ ``min_bucket``), capped at the model's context."""
    n = min_bucket
    while n < needed:
        n *= 2
    if context and n > context:
        n = max(needed, context)
    return n


class FastDecodeUnsupported(RuntimeError):
    """This model (or this length) cannot use the fast decoder; the reply decodes eagerly."""


def last_logits_kwargs(model) -> dict:
    """``logits_to_keep=1`` where the model takes it: the prefill then skips the vocabulary projection of every
    prompt position but the last (at 16k tokens × 150k vocabulary that is gigabytes)."""
    cached = getattr(model, "_pg_last_logits_kwargs", None)
    if cached is None:
        import inspect
        try:
            cached = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
        except (TypeError, ValueError):
            cached = {}
        try:
            model._pg_last_logits_kwargs = cached
        except Exception:  # noqa: BLE001 - exotic wrappers
            pass
    return cached


@dataclass
class FastDecodeInfo:
    mode: str = ""    # "compiled + CUDA graphs", "compiled (inductor)", "… (graph breaks)", "static cache, eager"
    warmup_s: float = 0.0
    compiles: int = 0
    fallback_reason: str = ""
    fused: str = ""   # "fused qkv+gate/up" when the projections were fused (``fused_projections``), else ""
    compile_cache: str = ""   # what the warm-up found in torch's compile caches: "hit", "miss", "" (not compiled)


@dataclass
class FastSession:
    """One reply's share of the fast decoder: a static cache to decode through, or none (``cache is None``) and
    ``note`` saying why this reply decodes eagerly (empty when eager decoding was simply what was asked)."""
    decoder: FastDecoder | None = None
    cache: object = None
    note: str = ""

    @property
    def fast(self) -> bool:
        return self.cache is not None

    @property
    def mode(self) -> str:
        """What decodes this reply, read live: a failed compile may change the decoder's mode mid-reply."""
        return self.decoder.info.mode if self.fast else "eager"

    def prefill(self, ids):
        return self.decoder.prefill(ids, self.cache)

    def step(self, ids):
        return self.decoder.step(ids, self.cache)

    def step_greedy(self, ids, bias=None):
        return self.decoder.step_greedy(ids, self.cache, bias)

    def queue_greedy(self, ids, bias=None) -> "QueuedStep":
        return self.decoder.queue_greedy(ids, self.cache, bias)


class QueuedStep:
    """A greedy step queued on the device: ``ids`` [batch, 1] (on the device) feed the next step, and ``read()``
    waits for this step alone. Its tokens and their logits are copied to pinned host memory right behind it, with
    an event, so a step queued after it does not delay the read: the host's work on token n (text, stop checks,
    streaming) overlaps the device's step n + 1. On the CPU the step has run when it is queued."""

    def __init__(self, ids, top):
        import torch
        self.ids, self._top, self._event = ids, top, None
        if ids.device.type == "cuda":
            self._ids_host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
            self._top_host = torch.empty(top.shape, dtype=top.dtype, pin_memory=True)
            self._ids_host.copy_(ids, non_blocking=True)
            self._top_host.copy_(top, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def read(self) -> tuple[list[int], list[float]]:
        """(the chosen token of each row, its logit: NaN/inf when the logits were not finite)."""
        if self._event is None:
            return self.ids[:, 0].tolist(), self._top[:, 0].tolist()
        self._event.synchronize()
        return self._ids_host[:, 0].tolist(), self._top_host[:, 0].tolist()


class FastDecoder:
    """Static-cache decoding for one loaded model. A reply uses ``with decoder.session(needed) as s:`` then
    ``s.prefill`` → ``s.step`` …; the lower-level ``acquire`` → ``prefill`` → ``step`` … → ``release`` remain for
    the benchmark's batched loops."""

    def __init__(self, model, device: str, compile: bool = True, max_caches: int = 2, backend: str = "inductor",
                 min_bucket: int | None = None, fuse: bool = True, tune: bool = False):
        self.model = model
        self.device = str(device)
        self.cuda = self.device.startswith("cuda")
        self.want_compile = compile
        self.backend_name = backend            # "inductor"; "eager" runs dynamo only (tests of recompiles)
        self.tune = tune                       # coordinate-descent tuning of this step's kernels (inductor)
        self.min_bucket = min_bucket or (MIN_BUCKET if self.cuda else MIN_BUCKET_CPU)
        self.max_caches = max_caches
        self.info = FastDecodeInfo()
        self._caches: dict[tuple[int, int], object] = {}   # (batch, length) → StaticCache, LRU order
        self._busy: set[tuple[int, int]] = set()
        self._guard = threading.Lock()
        self._step = None                      # the (compiled) step, built on first use (``_build_step``)
        self._zero_bias = None
        self._fullgraph = True
        self.fusion = None
        if fuse:
            from .fused_projections import fuse_projections
            fusion = fuse_projections(model)
            self.fusion = fusion if fusion.groups else None
        self.info.fused = self.fusion.label if self.fusion else ""
        self.info.mode = self._mode_name()

    def _mode_name(self) -> str:
        fused = f", {self.info.fused}" if self.info.fused else ""
        if not self.want_compile:
            return "static cache, eager" + fused
        name = "compiled + CUDA graphs" if self.cuda and self.backend_name == "inductor" else \
            f"compiled ({self.backend_name})"
        tuned = ", tuned kernels" if self.tune and self.backend_name == "inductor" else ""
        return name + ("" if self._fullgraph else " (graph breaks)") + fused + tuned

    # -- compilation ------------------------------------------------------------------------------------------
    @property
    def compiles(self) -> int:
        return self.info.compiles

    def _backend(self):
        """inductor, counting each graph it is asked to build."""
        if self.backend_name == "eager":
            def backend(gm, example_inputs):
                self.info.compiles += 1
                return gm.forward
            return backend
        from torch._inductor.compile_fx import compile_fx
        patches = {"triton.cudagraphs": True} if self.cuda else {}
        if self.tune:       # for this graph only: torch's process-wide inductor config stays as it is.
            # gpt-fast's one setting: with it inductor also writes one-row products as Triton reductions (its mm
            # decomposition) whose block sizes the tuning picks; checking all directions too (torchao's default)
            # multiplies the first compile for little
            patches.update({"coordinate_descent_tuning": True})

        def backend(gm, example_inputs):
            self.info.compiles += 1
            return compile_fx(gm, example_inputs, config_patches=patches)
        return backend

    def _build_step(self):
        """The one compiled step: (logits [batch, vocab], the greedy next tokens [batch, 1], their logit [batch, 1]).
        The greedy choice is made inside the graph over ``logits + bias`` (``bias`` [1, vocab] float: 0, or -inf
        for ids that must not win, e.g. the stop tokens before ``min_new_tokens``), so a greedy loop reads two small
        tensors per step and launches nothing more; NaN/inf in the logits show in the chosen logit. One graph
        serves sampled replies (the logits), greedy ones and the benchmark's batches: one warm-up compiles it."""
        model = self.model
        keep = last_logits_kwargs(model)
        switch = self.fusion.switch if self.fusion else None

        def forward(input_ids, cache):
            if switch is None:
                out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, **keep)
                return out.logits[:, -1, :]
            # set and cleared inside the traced function: the graph is built with the fusion on, no guard on the
            # switch, and other threads never see it on because of a compiled step (dynamo replays only the end)
            switch.on = True
            try:
                out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, **keep)
            finally:
                switch.on = False
            return out.logits[:, -1, :]

        def step(input_ids, cache, bias):
            logits = forward(input_ids, cache)
            top, chosen = (logits.float() + bias).max(dim=-1, keepdim=True)
            return logits, chosen, top
        self.info.mode = self._mode_name()
        if not self.want_compile:
            return step
        import torch
        cfg = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):
            if hasattr(cfg, name) and getattr(cfg, name) < RECOMPILE_LIMIT:
                setattr(cfg, name, RECOMPILE_LIMIT)
        return torch.compile(step, backend=self._backend(), fullgraph=self._fullgraph, dynamic=False)

    def bias(self, banned=None, batch_device=None):
        """The ``bias`` of a step [1, vocab] float32: 0, with -inf at the ``banned`` token ids."""
        import torch
        vocab = self._vocab_size()
        dev = batch_device or self.model.get_input_embeddings().weight.device
        b = torch.zeros((1, vocab), dtype=torch.float32, device=dev)
        if banned is not None and len(banned):
            b[0, torch.as_tensor(banned, dtype=torch.long, device=dev)] = float("-inf")
        return b

    def _vocab_size(self) -> int:
        out = self.model.get_output_embeddings()
        weight = getattr(out, "weight", None)
        if weight is not None and weight.dim() == 2 and weight.device.type != "meta":
            return int(weight.shape[0])
        cfg = self.model.config
        text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
        return int(text.vocab_size)

    def _run_step(self, ids, cache, bias=None):
        """(logits, greedy tokens, their logit) of one step; ``bias`` None: nothing banned."""
        import torch
        if self._step is None:
            self._step = self._build_step()
        if bias is None:
            if self._zero_bias is None:
                self._zero_bias = self.bias(batch_device=ids.device)
            bias = self._zero_bias
        graphs = self.cuda and self.want_compile and self.backend_name == "inductor"
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            out = self._step(ids, cache, bias)
        except torch.OutOfMemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a kernel that cannot be compiled: degrade, say so, go on
            if not self.want_compile:
                raise
            self._fall_back(exc)
            self._step = self._build_step()
            out = self._step(ids, cache, bias)
        # a CUDA graph's outputs are overwritten by the next replay
        return tuple(t.clone() for t in out) if graphs else out

    def _fall_back(self, exc: Exception) -> None:
        from .retention import forget_frames
        forget_frames(exc)          # its frames hold the model (retention.py)
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        if self._fullgraph:
            self._fullgraph = False
            self.info.fallback_reason = f"full-graph compile failed ({reason}); compiled with graph breaks"
        else:
            self.want_compile = False
            self.info.fallback_reason = f"compile failed ({reason}); static cache without compilation"
        self._step = None              # rebuilt on next use, with graph breaks or without compiling
        self.info.mode = self._mode_name()

    # -- caches -----------------------------------------------------------------------------------------------
    def acquire(self, batch: int, needed: int, context: int | None = None):
        """A reset static cache for ``batch`` rows and ``needed`` positions, or None when it is in use."""
        from transformers import StaticCache
        key = (batch, bucket_length(needed, context, self.min_bucket))
        cache_config = self.cache_config(key[1])
        with self._guard:
            if key in self._busy:
                return None
            cache = self._caches.pop(key, None)
            if cache is None:
                for old in [k for k in self._caches if k not in self._busy][: max(0, len(self._caches) + 1 -
                                                                                   self.max_caches)]:
                    del self._caches[old]
                cache = StaticCache(config=cache_config, max_cache_len=key[1])
            else:
                cache.reset()
            self._caches[key] = cache
            self._busy.add(key)
        cache._fast_key = key
        return cache

    def cache_config(self, length: int):
        """The config the static cache is built from. Sliding-window layers keep their position as a Python int
        (``cumulative_length_int``) that the compiled step would be specialised on: a recompile at every token
        (seen on Mistral-7B). When the whole bucket fits in the window the window changes nothing, so the cache
        is built with full-attention layers; otherwise fast decoding is refused for this length."""
        import copy
        cfg = self.model.config
        text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
        windowed = ("sliding_attention", "chunked_attention", "hybrid_sliding")
        types = getattr(text, "layer_types", None)
        window = getattr(text, "sliding_window", None) or getattr(text, "attention_chunk_size", None)
        has_window = any(t in windowed for t in types) if types else window is not None
        if not has_window:
            return cfg
        if not window or length > window:
            raise FastDecodeUnsupported(
                f"sliding-window attention (window {window}) shorter than the {length}-token cache: the compiled "
                f"step would recompile at every token, so this length decodes eagerly")
        plain = copy.copy(text)
        n = len(types) if types else int(text.num_hidden_layers)
        plain.layer_types = ["full_attention"] * n
        plain.sliding_window = None
        if hasattr(plain, "attention_chunk_size"):
            plain.attention_chunk_size = None
        return plain

    @contextmanager
    def session(self, needed: int, batch: int = 1, context: int | None = None) -> Iterator[FastSession]:
        """A reply's static cache for ``needed`` positions, given back when the block ends (however it ends); or,
        when this length cannot use the fast decoder or its cache is held by another reply, a session without a
        cache whose ``note`` says why, and the reply decodes eagerly. The decoder stays usable either way."""
        note = ""
        try:
            cache = self.acquire(batch, needed, context)
        except FastDecodeUnsupported as exc:
            cache, note = None, str(exc)
        if cache is None:          # yielded outside the except: the reply's own errors must not chain to it
            yield FastSession(self, None, note or BUSY_NOTE)
            return
        try:
            yield FastSession(self, cache)
        finally:
            self.release(cache)

    def release(self, cache) -> None:
        with self._guard:
            self._busy.discard(getattr(cache, "_fast_key", None))

    def clear(self) -> None:
        with self._guard:
            self._caches = {k: v for k, v in self._caches.items() if k in self._busy}

    def forget_compiled(self) -> None:
        """After ``torch._dynamo.reset()``: build (and count) the step again on next use."""
        self._step = None
        self.clear()

    # -- decoding ---------------------------------------------------------------------------------------------
    def prefill(self, ids, cache):
        """Logits of the last prompt position [batch, vocab]; fills the cache (eager: prompt lengths vary). With
        fused projections on for its duration (a concurrent eager reply on another thread stays correct: a part
        only hands on a product computed from the very tensor it is given)."""
        switch = self.fusion.switch if self.fusion else None
        if switch is not None:
            switch.on = True
        try:
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, **last_logits_kwargs(self.model))
        finally:
            if switch is not None:
                switch.on = False
        return out.logits[:, -1, :]

    def step(self, ids, cache):
        """Logits [batch, vocab] for one new token per row (``ids`` is [batch, 1]) through the compiled step."""
        return self._run_step(ids, cache)[0]

    def step_greedy(self, ids, cache, bias=None):
        """The greedy next token per row [batch, 1], chosen inside the compiled step; ids where ``bias``
        (``FastDecoder.bias``) is -inf never win."""
        return self._run_step(ids, cache, bias)[1]

    def queue_greedy(self, ids, cache, bias=None) -> "QueuedStep":
        """Queue one greedy step and return at once (``QueuedStep``): its tokens feed the next step on the device
        while the host reads them (``read``) without waiting for what was queued after."""
        _, chosen, top = self._run_step(ids, cache, bias)
        return QueuedStep(chosen, top)

    def warm_up(self, batch: int = 1, needed: int = 0, context: int | None = None, prompt_tokens: int = 8) -> float:
        """Compile (and record CUDA graphs) for one bucket; returns seconds. Run once at load."""
        import torch
        t0 = time.perf_counter()
        cache = self.acquire(batch, needed, context)
        if cache is None:
            return 0.0
        before = compile_cache_counts()
        try:
            with torch.no_grad():
                dev = self.model.get_input_embeddings().weight.device
                ids = torch.full((batch, prompt_tokens), 1, dtype=torch.long, device=dev)
                logits = self.prefill(ids, cache)
                nxt = logits.argmax(-1, keepdim=True)
                for _ in range(3):           # 1: compile, 2: record the graph, 3: replay
                    nxt = self.step(nxt, cache).argmax(-1, keepdim=True)
                if self.cuda:
                    torch.cuda.synchronize()
        finally:
            self.release(cache)
        spent = time.perf_counter() - t0
        self.info.warmup_s += spent
        hits, misses = (a - b for a, b in zip(compile_cache_counts(), before))
        if hits or misses:
            self.info.compile_cache = "miss" if misses else "hit"
        return spent


def compile_cache_counts() -> tuple[int, int]:
    """(hits, misses) of inductor's compiled-graph cache so far in this process.

    Compiling the decode step is mostly inductor generating and building kernels (H200, Mistral-7B shape: 33 of
    its 40 s). torch keeps what it built in its FX-graph and AOT-autograd caches (on disk, under
    ``TORCHINDUCTOR_CACHE_DIR``), keyed by the graph, not by the weights, which are the graph's inputs: a second
    load of the same shape (after an unload in this process, or in another process on this machine) only traces
    the model again and reuses the kernels. Measured on the CPU, SmolLM2-135M fp32 fused, one process: warm-up
    38.6 s at the first load (cache cold), 5.5 s and 5.1 s at the next two."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:       # pragma: no cover - torch without dynamo
        return 0, 0
    inductor = counters["inductor"]
    return int(inductor["fxgraph_cache_hit"]), int(inductor["fxgraph_cache_miss"])


# ---- a loaded model's decoder: start, hand out to replies, forget -----------------------------------------------
def enable_fast_decode(lm, compile: bool = True, fuse: bool = True) -> FastDecoder | None:
    """Give ``lm`` (a ``manager.LoadedModel``) a FastDecoder and warm it up for the usual bucket; on failure, note
    why and stay eager (None). ``fuse``: fuse the projections (``FastDecoder(fuse=...)``); kernels are tuned when
    the model's options ask for it (``VariantOptions.wants_tuned_kernels``: int8-wo's by default)."""
    if lm.fast is not None:
        return lm.fast
    fast = FastDecoder(lm.model, lm.device, compile=compile, fuse=fuse,
                       tune=lm.options.wants_tuned_kernels(lm.device, lm.variant))
    try:
        with lm.lock:
            lm.stats.warmup_s = fast.warm_up(context=lm.context_length)
    except Exception as exc:  # noqa: BLE001 - fast decoding is an optimisation: never a reason not to serve
        from .manager import release_memory
        from .retention import forget_frames
        forget_frames(exc)
        release_memory()
        lm.stats.notes.append(f"fast decode unavailable ({type(exc).__name__}: {str(exc)[:200]}): eager decoding")
        return None
    lm.fast = fast
    cached = {"hit": " (compile cache hit: traced again, kernels reused)",
              "miss": " (compiled anew)"}
    lm.stats.notes.append(f"fast decode: {fast.info.mode}, warm-up {fast.info.warmup_s:.1f}s"
                          + cached.get(fast.info.compile_cache, "")
                          + (f"; {fast.info.fallback_reason}" if fast.info.fallback_reason else ""))
    return fast


def forget_compiled_graphs(remaining) -> None:
    """Drop compiled decode steps (and their CUDA graph pools) so an unloaded model's memory comes back; the
    models still loaded (``remaining``) rebuild theirs on their next reply."""
    import torch
    torch._dynamo.reset()
    for other in remaining:
        if other.fast is not None:
            other.fast.forget_compiled()


def _decoder_for(lm, decode: str, kv_cache: str) -> tuple[FastDecoder | None, str]:
    """The decoder a reply asking for ``decode`` with ``kv_cache`` may use (started now for ``decode="fast"``),
    or None and why not (empty when eager is what was asked, or what this model does by default)."""
    if decode == "eager":
        return None, ""
    if kv_cache != "default":
        asked = decode == "fast" or lm.fast is not None
        return None, (f"kv_cache={kv_cache}: the fast decoder's static cache cannot hold a quantized KV cache, so "
                      f"this reply decodes eagerly") if asked else ""
    fast = lm.fast
    if fast is None and decode == "fast":
        fast = enable_fast_decode(lm)
        if fast is None:
            return None, NOT_STARTED_NOTE
    return fast, ""


@contextmanager
def reply_session(lm, needed: int, decode: str = "auto", kv_cache: str = "default") -> Iterator[FastSession]:
    """One reply of ``lm`` (``needed`` = prompt + new tokens): the fast decoder's session when ``decode`` ("auto",
    "fast", "eager") and ``kv_cache`` allow it and its cache is free, else an eager session with the reason."""
    fast, note = _decoder_for(lm, decode, kv_cache)
    if fast is None:
        yield FastSession(None, None, note)
        return
    with fast.session(needed, 1, lm.context_length) as session:
        yield session
