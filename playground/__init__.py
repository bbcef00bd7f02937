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


quiet_libraries()
