"""Errors with messages meant for people: the UI and CLI show ``str(exc)`` as is, without a traceback."""


class PlaygroundError(Exception):
    """Base class: a clear, specific problem the user can act on."""


class ModelNotFoundError(PlaygroundError):
    """Unknown model name, missing folder, or a hub id that is neither cached nor reachable."""


class VariantUnsupportedError(PlaygroundError):
    """The variant cannot run here (missing library, wrong hardware, dtype the model cannot take)."""


class GenerationError(PlaygroundError):
    """Generation failed in a way the user should know about (NaN logits, out of memory, ...)."""


class PromptTooLongError(PlaygroundError):
    """The prompt does not fit the model's context."""


class InvalidParameterError(PlaygroundError, ValueError):
    """A generation or load parameter is out of range."""


class MemoryBudgetError(PlaygroundError):
    """The model cannot fit the configured memory budget even after unloading others."""


OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "bad_alloc", "memoryerror",
            "not enough memory", "errno 12", "failed to map segment")


def mentions_out_of_memory(text: str) -> bool:
    """True when an error message or a dead process's last output says it ran out of memory."""
    return any(t in text.lower() for t in OOM_TEXT)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the ways running out of memory surfaces: torch.OutOfMemoryError (CUDA), MemoryError (Python),
    ENOMEM, and the RuntimeError of torch's CPU allocator ("DefaultCPUAllocator: can't allocate memory")."""
    import errno
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    if isinstance(exc, OSError) and exc.errno == errno.ENOMEM:
        return True
    return isinstance(exc, RuntimeError) and mentions_out_of_memory(str(exc))
