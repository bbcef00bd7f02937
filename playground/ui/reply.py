"""The reply seam: what the Chat tab, the Compare tab and the ``/chat`` API stream a reply from.

``reply_source(ctx, model, variant, request)`` decides once whether ``model`` is a served endpoint
(``endpoint:<name>``, its variant ignored) or a local model × variant; every caller then does the same three
things: say whether a load is coming (``needs_load``), ``describe()`` it for a status line, and ``stream(...)``
the reply as ``StreamEvent``s (loading first, with a progress bar, if needed).

The sharing policy applies here, once for all three: the ``max_new_tokens`` ceiling, one user's replies at a
time, the reply deadline (the reply is stopped as if its user pressed Stop), and the note that a local model is
generating (shared mode does not unload it under its user).
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass

import gradio as gr

from ..endpoint_reply import stream_endpoint_reply
from ..endpoints import Endpoint, describe_endpoint
from ..engine import GenerationParams, StreamEvent, stream_reply
from ..manager import LoadedModel
from .common import UIContext, describe_loaded, user_id
from .served import endpoint_for


@dataclass
class ReplySource:
    """One model a reply comes from: a served endpoint, or a local model × variant (loaded or not yet)."""
    ctx: UIContext
    model: str
    variant: str
    endpoint: Endpoint | None = None
    loaded: LoadedModel | None = None
    user: str = ""

    @property
    def needs_load(self) -> bool:
        return self.endpoint is None and self.loaded is None

    def load(self, progress=None) -> None:
        if self.needs_load:
            self.loaded = self.ctx.load(self.model, self.variant, progress)

    def describe(self) -> str:
        """The status line: the endpoint's, or the loaded model's (its size, kernel, notes); loads if needed."""
        if self.endpoint is not None:
            return describe_endpoint(self.endpoint)
        self.load()
        return describe_loaded(self.loaded)

    def stream(self, messages: list[dict], system: str | None, params: GenerationParams,
               cancel: threading.Event | None = None, progress=None,
               on_prefill: Callable[[int, int], None] | None = None) -> Iterator[StreamEvent]:
        """The reply's events (text so far, then the last one with ``done`` and the stats); the same for both.
        A local model calls ``on_prefill(tokens done, total)`` after each chunk of the prompt it reads."""
        self.ctx.policy.check_params(params)
        return self._within_policy(messages, system, params, cancel or threading.Event(), progress, on_prefill)

    def _within_policy(self, messages, system, params, cancel, progress, on_prefill) -> Iterator[StreamEvent]:
        policy = self.ctx.policy
        last, timed_out = None, threading.Event()
        with ExitStack() as held:         # let go of the reply slot and the timer before the last event leaves
            held.enter_context(policy.reply_slot(self.user))
            if policy.reply_deadline_s:
                timer = threading.Timer(policy.reply_deadline_s, lambda: (timed_out.set(), cancel.set()))
                timer.daemon = True
                timer.start()
                held.callback(timer.cancel)
            if self.endpoint is not None:
                events = stream_endpoint_reply(self.endpoint, messages, system, params, cancel)
            else:
                self.load(progress)
                held.enter_context(self.ctx.replying_with(self.loaded.name, self.loaded.variant))
                events = stream_reply(self.loaded, messages, system, params, cancel, on_prefill=on_prefill)
            for event in events:
                if event.done:
                    last = event
                    break
                yield event
        if last is not None:
            if timed_out.is_set() and last.stats is not None:
                last.stats.notes.append(f"stopped at this shared app's limit of {policy.reply_deadline_s:.0f} s "
                                        f"per reply")
            yield last


def reply_source(ctx: UIContext, model: str, variant: str, request: gr.Request | None = None) -> ReplySource:
    """Where a reply to ``model`` × ``variant`` comes from, in the request's session (its own endpoints included).
    An unknown ``endpoint:x`` raises ModelNotFoundError naming the known ones."""
    endpoint = endpoint_for(ctx, model, request)
    if endpoint is not None:
        return ReplySource(ctx, model, variant, endpoint=endpoint, user=user_id(request))
    return ReplySource(ctx, model, variant, loaded=ctx.find(model, variant), user=user_id(request))
