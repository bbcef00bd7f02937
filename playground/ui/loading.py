"""Load bars and background work for the Chat and Compare tabs.

A load (GGUF conversion, GPTQ/AWQ calibration, reading weights) runs on a worker thread while the tab's event
handler polls its ``LoadTracker`` and streams a bar: stage, steps done of total, elapsed, an estimate, and a
Cancel (the tracker raises ``LoadCancelled`` at the load's next step; half-written folders are removed by
``atomic_dir.building``): ``load_bar_updates``, used by the Chat tab's Load button (``load``) and by a reply that
has to load first. A reply's events are likewise read on a worker thread (``events_in_thread``), so that
Stop ends the reply at once even while the model is still processing a long prompt (the engine itself stops
within one chunk of it, and ``PrefillProgress`` says how much of the prompt is read).
"""
from __future__ import annotations

import functools
import html
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import gradio as gr

from ..endpoints import is_endpoint_name
from ..engine import build_prompt
from ..errors import LoadCancelled, PlaygroundError
from ..manager import LoadedModel
from ..progress import LoadSnapshot, LoadTracker, fmt_seconds
from .common import UIContext, describe_loaded, session_id, user_error
from .served import endpoint_status

POLL_S = 0.5
# Long-lived worker threads, reused reply after reply: torch's OpenMP pool belongs to the thread that runs the ops,
# so a fresh thread per reply would start a new team of OpenMP threads each time (and libgomp ends the process
# when it cannot create them, e.g. near a memory limit). Idle workers are reused before a new one starts.
REPLY_POOL = ThreadPoolExecutor(max_workers=64, thread_name_prefix="playground-reply")
LOAD_POOL = ThreadPoolExecutor(max_workers=16, thread_name_prefix="playground-load")


def bar_html(snap: LoadSnapshot | None, elem_class: str = "load-bar") -> str:
    """A bar and its line in words (wrapping, never cut); "" when nothing loads."""
    if snap is None:
        return ""
    pct = max(0.0, min(100.0, snap.fraction * 100))
    return (f'<div class="{elem_class}" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
            f'aria-valuenow="{pct:.0f}"><div class="load-bar-track"><div class="load-bar-fill" '
            f'style="width: {pct:.1f}%"></div></div><div class="load-bar-text">{html.escape(snap.line())}</div>'
            f'</div>')


def note_html(text: str, fraction: float | None = None) -> str:
    """A line in the bar's place (the prompt being processed, the server being waited for), over a bar when
    ``fraction`` is known."""
    bar = ""
    if fraction is not None:
        pct = max(0.0, min(100.0, fraction * 100))
        bar = (f'<div class="load-bar-track" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
               f'aria-valuenow="{pct:.0f}"><div class="load-bar-fill" style="width: {pct:.1f}%"></div></div>')
    return f'<div class="load-bar load-note">{bar}<div class="load-bar-text">{html.escape(text)}</div></div>'


class PrefillProgress:
    """How much of a long prompt the model has read: ``update`` is the engine's ``on_prefill`` (called on the
    reply's worker thread after each chunk), ``take`` the handler's look at it (a new value or None)."""

    def __init__(self, total: int | None):
        self.done, self.total, self._shown = 0, total, (0, total)

    def update(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def take(self) -> tuple[int, int] | None:
        now = (self.done, self.total)
        if now == self._shown:
            return None
        self._shown = now
        return now


def prefill_note(n_prompt: int, done: int | None = None) -> str:
    """The line shown until the first token: the prompt's size, then how much of it is read."""
    read = f"{done} of {n_prompt}" if done is not None else f"{n_prompt}"
    return f"Processing the prompt ({read} tokens)… Stop ends it."


def load_in_thread(load: Callable[[], object], tracker: LoadTracker, poll_s: float | None = None
                   ) -> Iterator[LoadSnapshot]:
    """Run ``load()`` on a worker thread; yield the tracker's snapshot every ``poll_s`` until it ends, then re-raise
    what it raised (``LoadCancelled`` after a Cancel). The first snapshot comes at once."""
    done = threading.Event()
    failed: list[BaseException] = []

    def work():
        try:
            load()
        except BaseException as exc:   # handed to the caller's thread
            failed.append(exc)
        finally:
            done.set()

    LOAD_POOL.submit(work)
    yield tracker.snapshot()
    while not done.wait(poll_s or POLL_S):
        yield tracker.snapshot()
    if failed:
        raise failed[0]


def cancel_button(visible: bool):
    """The "Cancel loading" button beside the bar: shown while a load runs."""
    return gr.Button(visible=visible)


def load_bar_updates(what: str, cancel: threading.Event, load: Callable[[LoadTracker], object]
                     ) -> Iterator[tuple[str, str, object]]:
    """Run ``load(tracker)`` on a worker thread; yield (status line, bar, Cancel shown) until it ends, then
    re-raise what it raised (``LoadCancelled`` once ``cancel`` is set)."""
    tracker = LoadTracker(what, cancel)
    for snap in load_in_thread(lambda: load(tracker), tracker):
        yield snap.line(), bar_html(snap), cancel_button(True)


BUSY = "A reply is generating: press Stop first, then {what}."
LOADING = "A model is loading: wait for it (or press Cancel), then {what}."


def warn_if_replying(ctx: UIContext, request, what: str) -> bool:
    """A reply is generating, or a model loading, in this session's Chat: say which (a warning) instead of
    ignoring the click."""
    kind = ctx.cancels.running_kind(session_id(request), "chat")
    if kind is None:
        return False
    gr.Warning((LOADING if kind == "load" else BUSY).format(what=what))
    return True


def load(ctx: UIContext, model_name, variant_name, request: gr.Request):
    """The Chat tab's Load button: a bar while it loads (Cancel stops it), then the model's line. Yields (status,
    bar, Cancel)."""
    if is_endpoint_name(model_name):   # nothing to load: say whether the server answers
        yield endpoint_status(ctx, model_name, request, probe=True), "", cancel_button(False)
        return
    sid = session_id(request)
    if warn_if_replying(ctx, request, "load"):
        yield gr.skip(), gr.skip(), gr.skip()
        return
    cancel = ctx.cancels.start(sid, "chat", kind="load")
    # ended before the last frame is yielded: the generator resumes (and its finally runs) only when Gradio asks
    # for the next frame, and a Send clicked as the "Loaded" line appears was refused as "a reply is generating"
    ended = functools.partial(ctx.cancels.finish, sid, "chat", cancel)
    loaded: list = []
    try:
        yield from load_bar_updates(f"{model_name} [{variant_name}]", cancel,
                                    lambda tracker: loaded.append(ctx.load(model_name, variant_name, tracker)))
        ended()
        yield describe_loaded(loaded[0]), "", cancel_button(False)
    except LoadCancelled as exc:
        ended()
        yield f"■ Cancelled: {exc}", "", cancel_button(False)
    except PlaygroundError as exc:
        ended()
        yield f"⚠ Error: {exc}", "", cancel_button(False)
        raise user_error(str(exc)) from None
    finally:
        ended()


def wait_note(lm: LoadedModel, waited_s: float) -> str:
    """What the reply waited for, for its badge: "waited 123 s: GPTQ calibration 119 s, then load 4 s"."""
    s = lm.stats
    parts = []
    if s.convert_s >= 0.5:
        parts.append(f"GGUF conversion {fmt_seconds(s.convert_s)}")
    if s.quantize_s >= 0.5:
        parts.append(f"{lm.variant.upper()} calibration {fmt_seconds(s.quantize_s)}")
    parts.append(f"load {fmt_seconds(s.load_s)}" if s.load_s >= 0.5 else f"load {s.load_s:.1f} s")
    if s.warmup_s >= 0.5:
        parts.append(f"decode warm-up {fmt_seconds(s.warmup_s)}")
    return f"waited {fmt_seconds(waited_s)}: " + ", then ".join(parts)


def prompt_tokens(lm: LoadedModel | None, messages: list[dict], system: str | None) -> int | None:
    """The prompt's length in tokens as the engine will build it; None when not known (an endpoint, or a
    conversation the engine will refuse with its own message)."""
    if lm is None or lm.tokenizer is None or not messages:
        return None
    try:
        return len(build_prompt(lm, messages, system)[0])
    except Exception:      # the engine says what is wrong when the reply starts
        return None


def events_in_thread(events: Iterator, cancel: threading.Event, poll_s: float = 0.25) -> Iterator:
    """Iterate ``events`` on a worker thread of ``REPLY_POOL``; yield each event, and ``None`` every ``poll_s``
    while none comes (the caller looks at ``cancel`` then: a Stop during a long prompt's prefill needs no token to
    act on).

    If the caller stops early (Stop, or the browser went away), ``cancel`` is set: the engine checks it before
    every step and between two chunks of a long prompt, and ends there (within one chunk of the prefill)."""
    box: queue.Queue = queue.Queue()
    end = object()

    def pump():
        try:
            for event in events:
                box.put(event)
                if cancel.is_set() and box.qsize() > 64:   # nobody reads any more
                    break
        except BaseException as exc:
            box.put(exc)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()
            box.put(end)

    REPLY_POOL.submit(pump)
    finished = False
    try:
        while True:
            try:
                item = box.get(timeout=poll_s)
            except queue.Empty:
                yield None
                continue
            if item is end:
                finished = True
                return
            if isinstance(item, BaseException):
                finished = True
                raise item
            yield item
    finally:
        if not finished:
            cancel.set()
