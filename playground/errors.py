"""Errors with messages meant for people: the UI and CLI show ``str(exc)`` as is, without a traceback.

The command lines (``playground.cli``, ``playground.launch``, ``python -m benchmarks``) end on a bad argument, a
``PlaygroundError`` or a benchmark ``ConfigError`` the same way: ``usage_error`` prints one line and returns the
exit status 2, and ``OneLineArgumentParser`` does that for argparse's own errors (instead of the usage block).
"""
from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2      # the exit status of a command line that cannot run as given (argparse's)


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


class LoadCancelled(PlaygroundError):
    """A load (conversion, quantization, reading weights) stopped by its user (``progress.LoadTracker``'s Cancel):
    nothing half-made is kept."""


class UsageError(PlaygroundError):
    """Command-line arguments that cannot work together: printed as one line, exit status 2."""


def usage_error(message: str, prog: str | None = None, label: str = "error") -> int:
    """Print ``PROG: error: MESSAGE`` on stderr (no ``PROG: `` when None, no ``error: `` when label is "") and
    return ``EXIT_USAGE``: ``return usage_error(str(exc), "benchmarks")``."""
    head = (f"{prog}: " if prog else "") + (f"{label}: " if label else "")
    print(head + message, file=sys.stderr, flush=True)
    return EXIT_USAGE


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints the usage block on a bad argument; this parser prints one line, ``usage_error``'s, with
    "(see --help)" (``error_prog``: the name before "error:", set by a subclass; None: no name)."""
    error_prog: str | None = None

    def error(self, message: str):
        self.exit(usage_error(f"{message} (see --help)", self.error_prog))


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
