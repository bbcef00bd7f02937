"""LLM quantization playground: load a causal LM in one of several variants, chat with it, measure it.

Importing the package changes nothing in the process. Every entry point (``python launch.py`` / ``playground``,
``python -m playground.cli``, ``python -m benchmarks``, the benchmark's worker processes, the experiments) calls
``process_setup()`` first, before torch starts CUDA or oneDNN; a program that uses playground as a library
calls it too if it wants the same settings.
"""
from __future__ import annotations

import logging
import os


def quiet_libraries() -> None:
    """Silence start-up noise from libraries (missing optional CUDA extensions on CPU, duplicate progress bars).

    Errors still surface: only INFO/WARNING chatter of these loggers is dropped.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("torchao", "torch.utils._pytree", "gptqmodel", "logbar", "accelerate", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


def bound_cpu_kernel_caches(entries: int = 16) -> None:
    """Keep oneDNN's per-shape kernel caches small (before torch first uses them; the user's setting wins).

    On CPU, torch runs bf16 Linear layers through oneDNN, which keeps a compiled primitive for every input
    shape it has seen, in two caches of 1024 entries each (ideep's LRU_CACHE_CAPACITY and oneDNN's own).
    Every prompt length is a new shape: smollm2 in bf16 held ~2.4 MB more per distinct prompt length, so a
    chat server grew by ~0.6 MB a request for hundreds of MB before the caches would fill (the load test saw
    +15% RSS over 160 requests). 16 entries hold the decode step's shapes plus the prompts in flight; making a
    primitive per new prompt length and weight shape costs ~0.5 ms, a few ms next to a prefill of 100+ ms.
    """
    os.environ.setdefault("LRU_CACHE_CAPACITY", str(entries))
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", str(entries))


def return_freed_gpu_pages() -> None:
    """Let the CUDA caching allocator give back freed pages inside a segment (before CUDA starts; yours wins).

    Measured on an H200 (GLM-6B class, random weights, fast decode off): a loaded GPTQ model held 3.9 GB of
    tensors while nvidia-smi charged the process 7.6 GB (AWQ 6.0 GB). The tinygemm repack frees each original
    layer after its packed copy is made; the holes that leaves sit in segments that also hold packed layers, and
    ``empty_cache`` can only release whole segments. With expandable segments the allocator maps memory in 2 MB
    pages and releases free pages wherever they are, so what nvidia-smi shows follows what the tensors need."""
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def process_setup() -> None:
    """The process-wide settings of every entry point, each one kept where you set it yourself: small oneDNN
    kernel caches, CUDA's expandable segments, no gradio analytics, quiet library loggers. Call it first: the
    environment variables count only when set before torch's first CPU kernel / CUDA allocation."""
    bound_cpu_kernel_caches()
    return_freed_gpu_pages()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    quiet_libraries()
