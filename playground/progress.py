"""A progress callback shared by the CLI (tqdm bar) and the UI (gr.Progress): ``progress(fraction, message)``."""
from __future__ import annotations

import sys
from typing import Callable, Protocol


class Progress(Protocol):
    def __call__(self, fraction: float, message: str) -> None: ...


def console_progress(total: int = 100, stream=None) -> Progress:
    """A tqdm bar on stderr that follows fractions in [0, 1] and shows the latest message."""
    from tqdm.auto import tqdm

    bar = None

    def update(fraction: float, message: str) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, file=stream or sys.stderr, bar_format="{l_bar}{bar}| {elapsed}", leave=True)
        bar.set_description_str(message[:70])
        bar.n = max(0, min(total, round(fraction * total)))
        bar.refresh()
        if fraction >= 1.0:
            close()

    def close() -> None:
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None

    update.close = close  # type: ignore[attr-defined]  # call on failure so an error starts on its own line
    return update


def silent_progress(fraction: float, message: str) -> None:  # noqa: ARG001 - matches Progress
    return None


def scaled(progress: Progress, start: float, end: float) -> Progress:
    """Map a sub-task's [0, 1] onto [start, end] of the parent's bar."""
    def update(fraction: float, message: str) -> None:
        progress(start + (end - start) * max(0.0, min(1.0, fraction)), message)
    return update


ProgressFn = Callable[[float, str], None]
