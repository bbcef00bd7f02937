"""ModelManager: the one owner of loaded models and of the memory they use.

Loading beyond the memory budget unloads the least recently used models first; unloading drops every
reference, runs the garbage collector, empties the CUDA cache and asks glibc to hand freed pages back, so the
memory really returns to the system (tests measure it).
"""
from __future__ import annotations

import ctypes
import gc
import os
import threading
import time
import weakref
from collections.abc import Callable
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .catalog import ModelSource, resolve
from .errors import (MemoryBudgetError, ModelNotFoundError, PlaygroundError, VariantUnsupportedError,
                     is_out_of_memory)
from .progress import Progress, scaled, silent_progress
from .variants import VariantOptions, get_variant

GB = 1024 ** 3


@dataclass
class LoadStats:
    convert_s: float = 0.0       # GGUF → folder conversion (first use only)
    quantize_s: float = 0.0      # GPTQ/AWQ calibration + quantization (first use only)
    load_s: float = 0.0          # from_pretrained (includes bitsandbytes quantization) + move to device
    weights_bytes: int = 0       # parameters + buffers as held in memory
    warmup_s: float = 0.0        # fast decode: compiling the decode step (and recording CUDA graphs) at load
    weights_by_device: dict[str, int] = field(default_factory=dict)   # {"cuda:0": bytes, "cuda:1": …}
    notes: list[str] = field(default_factory=list)


@dataclass
class LoadedModel:
    key: tuple                   # (model name, variant, device, options)
    name: str
    variant: str
    device: str
    model: object
    tokenizer: object
    source: ModelSource
    options: VariantOptions
    stats: LoadStats
    kernel: str | None = None    # quantized linear kernel actually used (gptq/awq/bnb)
    fast: object = None          # playground.fast_decode.FastDecoder when fast decoding is on
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    last_used: float = field(default_factory=time.monotonic)

    @property
    def label(self) -> str:
        return f"{self.name} [{self.variant}]"

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def context_length(self) -> int:
        cfg = self.model.config
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        return int(getattr(text_cfg, "max_position_embeddings", 0) or 2048)


def default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _quantization_state(param) -> list:
    """Tensors bitsandbytes keeps beside a quantized weight, not as parameters or buffers: a 4-bit weight's
    ``quant_state`` (absmax, code, and with double quantization the nested ``state2``), an int8 weight's ``SCB``."""
    import torch
    found = [getattr(param, "SCB", None)]
    state = getattr(param, "quant_state", None)
    while state is not None:
        found += [getattr(state, name, None) for name in ("absmax", "code", "offset")]
        state = getattr(state, "state2", None)
    return [t for t in found if isinstance(t, torch.Tensor)]


def _storage_tensors(t) -> list:
    """The plain tensors that hold ``t``'s data: ``t`` itself, or the inner tensors of a tensor subclass (torchao's
    ``Int8Tensor`` holds int8 ``qdata`` and scales; it reports its logical dtype's size and a data_ptr of 0)."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass
    if not is_traceable_wrapper_subclass(t):
        return [t]
    names, _ = t.__tensor_flatten__()
    return [leaf for n in names for leaf in _storage_tensors(getattr(t, n))]


def weights_bytes(model) -> int:
    """Bytes held by parameters and buffers (quantized tensors count at their packed size, tensor subclasses by
    their inner tensors), and bitsandbytes' quantization state (nf4's scales are ~6% of its weights; double
    quantization shrinks them)."""
    return sum(weights_by_device(model).values())


def weights_by_device(model) -> dict[str, int]:
    """``weights_bytes`` per device: ``{"cuda:0": …, "cuda:1": …}`` for a model placed with ``device_map``.
    Weights accelerate offloads sit on the meta device (the values wait in CPU memory or on the disk and are copied
    to the GPU for each forward): they count where ``hf_device_map`` put their module, "cpu" or "disk"."""
    from .placement import device_name, offloaded_to
    placed = getattr(model, "hf_device_map", None) or {}
    seen, out = set(), {}
    params = list(model.named_parameters())
    named = params + list(model.named_buffers()) + [(n, s) for n, p in params for s in _quantization_state(p)]
    for name, t in named:
        for leaf in _storage_tensors(t):
            meta = leaf.device.type == "meta"      # no storage: every meta tensor's data_ptr is 0
            key = ("meta", id(leaf)) if meta else (leaf.device, leaf.data_ptr())
            if key in seen:
                continue
            seen.add(key)
            where = offloaded_to(name, placed) if meta else device_name(leaf.device)
            out[where] = out.get(where, 0) + leaf.numel() * leaf.element_size()
    return out


def weight_subclass_kind(model) -> str | None:
    """The tensor subclass a plain Linear's weight was quantized into (torchao: ``Int8Tensor``), if any."""
    import torch
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear) and is_traceable_wrapper_subclass(mod.weight):
            return f"{type(mod.weight).__name__} ({type(mod.weight).__module__.split('.')[0]})"
    return None


def quantized_layer_kinds(model) -> dict[str, int]:
    """Count of Linear-like module classes by name (what tests check to prove quantization happened)."""
    import torch
    counts: dict[str, int] = {}
    for mod in model.modules():
        name = type(mod).__name__
        if isinstance(mod, torch.nn.Linear) or "Linear" in name:
            counts[name] = counts.get(name, 0) + 1
    return counts


def give_back_cached_gpu_memory() -> None:
    """The CUDA allocator's free cached blocks back to the driver (no garbage collection: 0.3-0.5 s on a big heap,
    which would make a small model's load 70% slower on CPU)."""
    import torch
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def release_memory() -> None:
    from .retention import drop_stored_tracebacks
    drop_stored_tracebacks()    # exceptions kept in module globals hold frames that hold models (retention.py)
    gc.collect()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
    except Exception:  # pragma: no cover - best effort
        pass
    if os.name == "posix":
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:  # not glibc
            pass


@dataclass
class UnreturnedMemory:
    """A model that was unloaded but is still alive: what it holds, and what holds it (``retention.held_by``)."""
    label: str
    bytes: int
    held_by: str
    model_ref: object = field(repr=False, default=None)   # weakref.ref to the model

    @property
    def still_held(self) -> bool:
        return self.model_ref is not None and self.model_ref() is not None


class ModelManager:
    """Loads, caches and unloads models; thread-safe; LRU eviction by a memory budget in bytes."""

    def __init__(self, budget_bytes: int | None = None, device: str | None = None,
                 max_memory: dict | None = None):
        self.device = device or default_device()
        self.max_memory = max_memory            # per-device caps for device_map="auto" (placement.parse_max_memory)
        self.budget_bytes = budget_bytes if budget_bytes is not None else self._default_budget()
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        self._lock = threading.RLock()
        self._loading: dict[tuple, threading.Event] = {}
        self.unreturned: list[UnreturnedMemory] = []   # unloads whose model something else still holds
        # models eviction must skip (the shared app: a model generating a reply for someone); none by default
        self.busy: Callable[[LoadedModel], bool] = lambda lm: False

    def _default_budget(self) -> int:
        import psutil
        import torch
        if self.device.startswith("cuda"):
            return int(torch.cuda.get_device_properties(0).total_memory * 0.85)
        if self.device == "auto" and self.max_memory:      # placed over the capped devices: their sum
            return int(sum(v for k, v in self.max_memory.items() if k != "disk"))
        if self.device == "auto" and torch.cuda.is_available():   # over every GPU
            return int(sum(torch.cuda.get_device_properties(i).total_memory
                           for i in range(torch.cuda.device_count())) * 0.85)
        return int(psutil.virtual_memory().total * 0.5)

    # -- queries ---------------------------------------------------------------------------------------------
    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._models.values())

    def used_bytes(self) -> int:
        return sum(m.stats.weights_bytes for m in self.loaded())

    def find(self, name: str, variant: str, device: str | None = None) -> LoadedModel | None:
        device = device or self.device
        with self._lock:
            for m in self._models.values():
                if m.name == name and m.variant == variant and m.device == device:
                    return m
        return None

    # -- loading ---------------------------------------------------------------------------------------------
    def get(self, name: str, variant: str = "bf16", *, device: str | None = None,
            options: VariantOptions | None = None, trust_remote_code: bool = False,
            progress: Progress | None = None) -> LoadedModel:
        """Return the loaded model, loading it (and evicting LRU models to fit the budget) if needed."""
        device = device or self.device
        options = options or VariantOptions()
        key = (name, variant, device, options, trust_remote_code)
        progress = progress or silent_progress
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                lm = self._models[key]
                lm.last_used = time.monotonic()
                return lm
        lm = self._load(key, name, variant, device, options, trust_remote_code, progress)
        with self._lock:
            self._models[key] = lm
            self._models.move_to_end(key)
        return lm

    def _make_room(self, needed: int, keep: tuple | None = None) -> list[str]:
        evicted = []
        with self._lock:
            while self.used_bytes() + needed > self.budget_bytes:
                oldest_key = next((k for k in self._models if k != keep and not self.busy(self._models[k])), None)
                if oldest_key is None:
                    break
                evicted.append(self._models[oldest_key].label)
                self._unload_key(oldest_key)
        if self.used_bytes() + needed > self.budget_bytes:
            raise MemoryBudgetError(
                f"needs about {needed / GB:.2f} GB but the memory budget is {self.budget_bytes / GB:.2f} GB "
                f"({self.used_bytes() / GB:.2f} GB in use by models that are busy or pinned)")
        return evicted

    def estimate_bytes(self, source: ModelSource, variant: str) -> int:
        """Rough size before loading: safetensors size scaled by the variant's bits (16-bit checkpoints)."""
        if not source.local:
            return 0
        files = list(Path(source.path).glob("*.safetensors")) + list(Path(source.path).glob("*.bin"))
        on_disk = sum(f.stat().st_size for f in files)
        bits = get_variant(variant).weight_bits
        return int(on_disk * max(bits, 4) / 16) if bits <= 16 else on_disk * 2

    def _load(self, key, name, variant_name, device, options, trust_remote_code, progress) -> LoadedModel:
        import torch
        from transformers import AutoTokenizer

        variant = get_variant(variant_name)
        variant.check_supported(device)
        stats = LoadStats()
        # the bar's ranges: conversion (first use of a packaged GGUF) 0-15 %, quantization (first GPTQ/AWQ use)
        # 15-80 %, reading the weights (bitsandbytes quantizes here) 80-97 %: each moves with its own steps
        progress(0.0, f"resolving {name}")
        source = resolve(name, scaled(progress, 0.0, 0.15))
        stats.convert_s = source.convert_s
        if source.entry is not None and variant_name in source.entry.nan_variants:
            stats.notes.append(f"{name} is known to overflow to NaN/inf in {variant_name}: replies will fail "
                               f"with a clear error; use bf16 or fp32")
        evicted = self._make_room(self.estimate_bytes(source, variant_name))
        if evicted:
            stats.notes.append("unloaded to fit the memory budget: " + ", ".join(evicted))

        plan = variant.plan(source, options, device, scaled(progress, 0.15, 0.8))
        stats.quantize_s = plan.quantize_s
        stats.notes.extend(plan.notes)
        progress(0.8, f"loading {name} as {variant_name} on {device}")
        local_only = source.local or os.environ.get("HF_HUB_OFFLINE") == "1"
        common = {"trust_remote_code": trust_remote_code, "local_files_only": local_only}
        kwargs = dict(plan.kwargs, **common)
        if device == "auto":
            kwargs["device_map"] = "auto"
            if self.max_memory:
                kwargs["max_memory"] = self.max_memory
            if plan.loader != "gptqmodel" and "quantization_config" not in plan.kwargs:
                from .placement import preflight
                stats.notes.extend(preflight(plan.path, plan.kwargs.get("dtype"), self.max_memory,
                                             f"{name} [{variant_name}]", trust_remote_code))
        else:
            kwargs["device_map"] = device
        t0 = time.perf_counter()
        try:
            with weight_loading_progress(scaled(progress, 0.8, 0.97)):
                model, kernel = self._read_weights(plan, kwargs, device, options)
            tokenizer = AutoTokenizer.from_pretrained(source.path, **common)
        except OSError as exc:
            raise self._explain_os_error(name, exc, source.local) from exc
        except ValueError as exc:
            if "trust_remote_code" in str(exc):
                raise PlaygroundError(
                    f"{name} contains custom code; loading it runs that code on this machine. Turn on "
                    f"trust_remote_code for this model only if you trust its authors: start the app with "
                    f"--trust-remote-code {name} (the terminal chat: --trust-remote-code).") from exc
            raise
        except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
            if not is_out_of_memory(exc):   # on CPU torch's allocator raises a RuntimeError (ENOMEM)
                raise
            release_memory()
            raise MemoryBudgetError(f"out of memory loading {name} as {variant_name} on {device}: "
                                    f"choose a smaller variant or unload other models") from exc
        model.eval()
        stats.load_s = time.perf_counter() - t0
        give_back_cached_gpu_memory()   # what loading freed (repack temporaries): nvidia-smi then shows the weights
        stats.weights_by_device = weights_by_device(model)
        stats.weights_bytes = sum(stats.weights_by_device.values())
        if kernel is None:
            kinds = quantized_layer_kinds(model)
            kernel = next((k for k in kinds if k not in ("Linear",)), None) or weight_subclass_kind(model)
        if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
            tokenizer.pad_token = tokenizer.eos_token
        lm = LoadedModel(key=key, name=name, variant=variant_name, device=device, model=model,
                         tokenizer=tokenizer, source=source, options=options, stats=stats, kernel=kernel)
        if device == "auto" and options.fast_decode != "off":      # checked first: "on" cannot hold here
            stats.notes.append("fast decode (static KV cache + compiled step) runs a model on one GPU: a model "
                               "placed with --max-memory decodes eagerly")
        elif options.wants_fast_decode(device, variant_name):
            progress(0.9, f"compiling the decode step of {name} [{variant_name}] (once per load)")
            enable_fast_decode(lm)
            give_back_cached_gpu_memory()   # the warm-up's prefill buffers: nvidia-smi then shows weights + graphs
        elif options.fast_decode == "auto" and str(device).startswith("cuda"):
            if variant.eager_note:
                stats.notes.append(variant.eager_note)
        elif options.fast_decode == "auto":
            stats.notes.append("fast decode (static KV cache + compiled step) is for CUDA: eager decoding here")
        progress(1.0, f"loaded {name} [{variant_name}] in {stats.load_s:.1f}s"
                      + (f" + {stats.warmup_s:.1f}s decode warm-up" if stats.warmup_s else ""))
        return lm

    @staticmethod
    def _read_weights(plan, kwargs: dict, device: str, options: VariantOptions):
        """The model from its (converted, quantized) folder, and the kernel its quantized layers run on."""
        import torch
        from transformers import AutoModelForCausalLM
        if plan.loader == "gptqmodel":
            from . import gptq_awq
            model, info = gptq_awq.load_quantized(plan.path, device=device,
                                                  dtype=torch.bfloat16 if options.compute_dtype == "bf16" else None,
                                                  backend=options.kernel)
            return model, info.get("kernel")
        return AutoModelForCausalLM.from_pretrained(plan.path, **kwargs), None

    @staticmethod
    def _explain_os_error(name: str, exc: OSError, local: bool = False) -> PlaygroundError:
        import errno
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        text = str(exc)
        if exc.errno == errno.ENOMEM or isinstance(exc, MemoryError):
            return MemoryBudgetError(f"out of memory loading {name}: choose a smaller variant or unload models")
        if local:  # a folder on disk: the hub has nothing to do with it
            return ModelNotFoundError(f"{name} could not be loaded: {text.splitlines()[0] if text else exc!r}")
        if "local_files_only" in text or "offline" in text.lower() or "connect" in text.lower() or offline:
            return ModelNotFoundError(
                f"{name} is not in the local Hugging Face cache and the hub cannot be reached"
                f"{' (HF_HUB_OFFLINE=1)' if offline else ''}: download it on a machine with internet "
                f"(huggingface-cli download {name}) or pass a local folder")
        if "is not a valid model identifier" in text or "404" in text or "Repository Not Found" in text:
            return ModelNotFoundError(f"{name}: no such model on the Hugging Face hub (check the spelling)")
        return ModelNotFoundError(f"{name} could not be loaded: {text.splitlines()[0] if text else exc!r}")

    # -- unloading -------------------------------------------------------------------------------------------
    def _unload_key(self, key) -> None:
        lm = self._models.pop(key, None)
        if lm is None:
            return
        with lm.lock:  # wait for a reply in progress on this model to finish its current step
            compiled = lm.fast is not None
            model_ref = weakref.ref(lm.model) if lm.model is not None else None
            held = lm.stats.weights_bytes
            lm.model = None
            lm.tokenizer = None
            lm.fast = None
        label = lm.label
        del lm
        if compiled:
            forget_compiled_graphs(self._models.values())
        release_memory()
        self.unreturned = [u for u in self.unreturned if u.still_held]
        if model_ref is not None and model_ref() is not None:
            from .retention import held_by
            self.unreturned.append(UnreturnedMemory(label, held, held_by(model_ref()), model_ref))

    def unload(self, name: str, variant: str, device: str | None = None) -> bool:
        with self._lock:
            lm = self.find(name, variant, device)
            if lm is None:
                return False
            self._unload_key(lm.key)
            return True

    def unload_all(self) -> None:
        with self._lock:
            for key in list(self._models):
                self._unload_key(key)


# ---- progress while transformers reads the weights ----------------------------------------------------------------
_weights_report = threading.local()     # this thread's progress callback while it loads (None: none)


@contextmanager
def weight_loading_progress(progress: Progress):
    """Report transformers' "Loading weights" loop (one step per tensor; bitsandbytes quantizes in it) to
    ``progress`` as "loading weights: i/n tensors", in this thread only. A callback that raises (Cancel) stops the
    load there. transformers has no callback for it, so its loop's ``tqdm`` is wrapped once
    (transformers/core_model_loading.py, ``for ... in tqdm(param_name_to_load.items(), desc="Loading weights")``);
    other threads and other bars go through unchanged."""
    _wrap_loading_tqdm()
    previous = getattr(_weights_report, "fn", None)
    _weights_report.fn = progress
    try:
        yield
    finally:
        _weights_report.fn = previous


def _wrap_loading_tqdm() -> None:
    try:
        from transformers import core_model_loading as cml
    except ImportError:        # another transformers layout: loads still work, without per-tensor progress
        return
    original = getattr(cml, "tqdm", None)
    if original is None or getattr(original, "playground_wrapped", False):
        return

    def tqdm(iterable=None, *args, **kwargs):
        report = getattr(_weights_report, "fn", None)
        if report is None or iterable is None or not hasattr(iterable, "__len__"):
            return original(iterable, *args, **kwargs)
        return _reporting(iterable, report)
    tqdm.playground_wrapped = True
    cml.tqdm = tqdm


def _reporting(iterable, report: Progress):
    total = len(iterable)
    every = max(1, total // 20)   # a console bar without a tty prints every step as a line
    for i, item in enumerate(iterable):
        if i % every == 0:
            report(i / max(1, total), f"loading weights: {i}/{total} tensors")
        yield item
    report(1.0, f"loading weights: {total}/{total} tensors")


def enable_fast_decode(lm: LoadedModel, compile: bool = True):
    """Give ``lm`` a FastDecoder and warm it up for the usual bucket; on failure, note why and stay eager
    (``fast_decode.enable_fast_decode``: the fast decoder's lifecycle lives there)."""
    from .fast_decode import enable_fast_decode as enable
    return enable(lm, compile)


def forget_compiled_graphs(remaining) -> None:
    """Drop compiled decode steps so an unloaded model's memory comes back (``fast_decode.forget_compiled_graphs``)."""
    from .fast_decode import forget_compiled_graphs as forget
    forget(remaining)


def check_variant_available(variant: str, device: str) -> str | None:
    """None if the variant can run on this device, else the reason (for UIs that grey out choices)."""
    try:
        get_variant(variant).check_supported(device)
    except VariantUnsupportedError as exc:
        return str(exc)
    return None
