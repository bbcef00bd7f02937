"""LLM quantization playground: load a causal LM in one of several variants, chat with it, measure it."""
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


bound_cpu_kernel_caches()
quiet_libraries()
