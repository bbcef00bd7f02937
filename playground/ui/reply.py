"""The reply seam: what the Chat tab, the Compare tab and the ``/chat`` API stream a reply from.

``reply_source(ctx, model, variant, request)`` decides once whether ``model`` is a served endpoint
(``endpoint:<name>``, its variant ignored) or a local model × variant; every caller then does the same three
things: say whether a load is coming (``needs_load``), ``describe()`` it for a status line, and ``stream(...)``
the reply as ``StreamEvent``s (loading first, with a progress bar, if needed).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr

from ..endpoints import Endpoint, describe_endpoint, stream_endpoint_reply
from ..engine import GenerationParams, StreamEvent, stream_reply
from ..manager import LoadedModel
from .common import UIContext, describe_loaded
from .served import endpoint_for


@dataclass
class ReplySource:
    """One model a reply comes from: a served endpoint, or a local model × variant (loaded or not yet)."""
    ctx: UIContext
    model: str
    variant: str
    endpoint: Endpoint | None = None
    loaded: LoadedModel | None = None

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
               cancel: threading.Event | None = None, progress=None) -> Iterator[StreamEvent]:
        """The reply's events (text so far, then the last one with ``done`` and the stats); the same for both."""
        if self.endpoint is not None:
            return stream_endpoint_reply(self.endpoint, messages, system, params, cancel)
        self.load(progress)
        return stream_reply(self.loaded, messages, system, params, cancel)


def reply_source(ctx: UIContext, model: str, variant: str, request: gr.Request | None = None) -> ReplySource:
    """Where a reply to ``model`` × ``variant`` comes from, in the request's session (its own endpoints included).
    An unknown ``endpoint:x`` raises ModelNotFoundError naming the known ones."""
    endpoint = endpoint_for(ctx, model, request)
    if endpoint is not None:
        return ReplySource(ctx, model, variant, endpoint=endpoint)
    return ReplySource(ctx, model, variant, loaded=ctx.find(model, variant))
