"""A progress callback shared by the CLI (tqdm bar) and the UI (gr.Progress): ``progress(fraction, message)``."""
from __future__ import annotations

import re
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from .errors import LoadCancelled


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


# ---- a load that can be watched and cancelled (the Chat and Compare load bars) ----------------------------------
_COUNT = re.compile(r"(\d+)\s*/\s*(\d+)")


def fmt_seconds(s: float) -> str:
    """12 s, 2 min 05 s, 1 h 03 min."""
    s = max(0, int(round(s)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@dataclass
class LoadSnapshot:
    """Where a load is, at one moment (what a load bar shows)."""
    what: str                       # "smollm2-135m-instruct [gptq]"
    fraction: float                 # of the whole load, never going back
    stage: str                      # "GPTQ calibration", "loading weights", ...
    count: tuple[int, int] | None   # (done, total) of the stage's steps (layers, tensors), when it has steps
    elapsed_s: float
    eta_s: float | None             # the stage's remaining time, from its steps' pace (None: not known yet)
    cancelling: bool = False

    def line(self) -> str:
        """One line in words: stage, steps done of total, elapsed, estimate."""
        parts = [f"{self.fraction * 100:.0f} %", self.stage]
        if self.count:
            parts[-1] += f" ({self.count[0]} of {self.count[1]})"
        parts.append(f"{fmt_seconds(self.elapsed_s)} elapsed")
        if self.eta_s is not None:
            parts.append(f"about {fmt_seconds(self.eta_s)} left")
        head = "■ Cancelling" if self.cancelling else "◔ Loading"
        return f"{head} {self.what}: " + " · ".join(parts)


class LoadTracker:
    """A ``Progress`` callback that remembers where a load is, read by another thread (the UI polls
    ``snapshot()`` while the load runs in a worker thread: gr.Progress cannot be fed from gptqmodel's threads).

    A message ``"<stage>: 12/30 ..."`` is step 12 of 30 of ``<stage>``; the estimate is the stage's pace since its
    first step. Setting ``cancel`` makes the next progress call raise ``LoadCancelled``: conversion and
    quantization write into a temporary folder (``atomic_dir.building``), which that exception removes.
    """

    def __init__(self, what: str, cancel: threading.Event | None = None, clock=time.monotonic):
        self.what, self.cancel, self._clock = what, cancel or threading.Event(), clock
        self._lock = threading.Lock()
        self.t0 = clock()
        self.fraction, self.stage, self.count = 0.0, "starting", None
        self._stage_t0 = self.t0
        self._first: tuple[float, int] | None = None      # (time, steps done) at the stage's first count
        self._last_t = self.t0                             # time of the stage's latest count
        self.stages: list[tuple[str, float]] = []         # finished stages and their seconds

    def __call__(self, fraction: float, message: str) -> None:
        if self.cancel.is_set():
            raise LoadCancelled(f"loading {self.what} was cancelled at {self.stage}: nothing half-made was kept")
        now = self._clock()
        match = _COUNT.search(message or "")
        stage = (message[:match.start()] if match else message or "").strip().rstrip(":").strip() or self.stage
        with self._lock:
            self.fraction = max(self.fraction, max(0.0, min(1.0, float(fraction))))
            if stage != self.stage:
                self.stages.append((self.stage, now - self._stage_t0))
                self.stage, self._stage_t0, self.count, self._first = stage, now, None, None
            if match:
                done, total = int(match.group(1)), int(match.group(2))
                if self._first is None:
                    self._first = (now, done)
                if self.count is None or done != self.count[0]:
                    self._last_t = now
                self.count = (done, total)

    def snapshot(self) -> LoadSnapshot:
        now = self._clock()
        with self._lock:
            eta = None
            if self.count and self._first and self.count[0] > self._first[1]:
                pace = (self._last_t - self._first[0]) / (self.count[0] - self._first[1])
                eta = max(0.0, pace * max(0, self.count[1] - self.count[0]) - (now - self._last_t))
            return LoadSnapshot(self.what, self.fraction, self.stage, self.count, now - self.t0, eta,
                                self.cancel.is_set())
