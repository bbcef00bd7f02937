"""Work in this process that shares the device with the replies, so the UI can say so.

A benchmark sweep started from the app runs its workers on the same CPU or GPU as the chat: while it runs,
replies are slower and chatting disturbs the sweep's timings. The sweep (``benchmarks.runner.run_sweep``) marks
its time here with ``sharing_device("benchmark")``, and the Chat and Compare tabs read ``device_sharers()``
(``playground.ui.common.device_busy_note``). The record lives in playground/ so that the dependency points one
way: benchmarks/ reports into playground/, and playground/ never imports benchmarks/.
"""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_sharers: Counter[str] = Counter()


@contextmanager
def sharing_device(what: str) -> Iterator[None]:
    """Mark ``what`` (a noun the UI shows: "A benchmark is running ...") as using the device until the block ends."""
    with _lock:
        _sharers[what] += 1
    try:
        yield
    finally:
        with _lock:
            _sharers[what] -= 1
            if _sharers[what] <= 0:
                del _sharers[what]


def device_sharers() -> list[str]:
    """What shares the device right now, in the order it started (empty when nothing does)."""
    with _lock:
        return list(_sharers)
