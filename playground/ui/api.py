"""The ``/chat`` API endpoint for gradio_client (and curl): one reply, streamed, with its stats at the end.

    from gradio_client import Client
    job = Client("http://127.0.0.1:7860/").submit(model="smollm2-135m-instruct", variant="bf16",
                                                  message="What is the capital of France?", greedy=True,
                                                  api_name="/chat")
    for reply_so_far, stats in job: ...      # stats is {} until the reply is done
    reply, stats = job.result()              # stats: ReplyStats.to_dict() (ttft_s, decode_tok_s, ...)
"""
from __future__ import annotations

import logging

import gradio as gr

from ..errors import InvalidParameterError, PlaygroundError
from .common import PARAM_NAMES, UIContext, bind, params_from, session_id, user_error
from .loading import events_in_thread
from .reply import reply_source

log = logging.getLogger(__name__)


def _text(content, where: str = "content") -> str:
    """Message content as plain text; accepts Gradio's normalized form ([{"type": "text", "text": ...}]).
    Anything else (numbers, files, nested lists) is a clear error rather than a silently empty turn."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and isinstance(content.get("text"), str):
        return content["text"]
    if isinstance(content, list) and all(isinstance(c, str) or (isinstance(c, dict) and isinstance(
            c.get("text"), str)) for c in content):
        return "".join(_text(c) for c in content)
    raise InvalidParameterError(f"{where} must be text (or a list of {{'type': 'text', 'text': ...}} parts), "
                                f"got {content!r:.120}")


def normalize_history(history) -> list[dict]:
    if history in (None, "", []):
        return []
    if not isinstance(history, list):
        raise InvalidParameterError("history must be a list of {'role': 'user'|'assistant', 'content': str}")
    msgs = []
    for i, m in enumerate(history):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system"):
            raise InvalidParameterError(
                f"history[{i}] must be a dict with role 'user' or 'assistant' and a content string, "
                f"got {m!r:.120}")
        if m["role"] != "system":
            msgs.append({"role": m["role"], "content": _text(m.get("content"), f"history[{i}].content")})
    return msgs


# A generator: gradio streams each yield; the hint describes one yielded value (reply so far, stats).
def chat(ctx: UIContext, model: str, variant: str, message: str, history: list[dict] | None = None,
         system_prompt: str = "", max_new_tokens: int = 256, temperature: float = 0.7, top_p: float = 0.9,
         top_k: int = 50, repetition_penalty: float = 1.0, seed: int | None = None, greedy: bool = False,
         kv_cache: str = "default", request: gr.Request = None) -> tuple[str, dict]:
    """Reply to `message` after `history` with model × variant. Streams (reply_so_far, {}) then
    (reply, stats) where stats has ttft_s, decode_tok_s, new_tokens, peak_mem_gb, finish_reason, badge."""
    values = locals()            # the generation parameters by name, as the UI's widgets pass them
    try:
        params = params_from({name: values[name] for name in PARAM_NAMES})
        if message is not None and not isinstance(message, str):
            raise InvalidParameterError(f"message must be text, got {type(message).__name__} {message!r:.80}")
        if not (message or "").strip():
            raise InvalidParameterError("the message is empty: type something to send")
        if system_prompt is not None and not isinstance(system_prompt, str):
            raise InvalidParameterError(f"system_prompt must be text, got {system_prompt!r:.80}")
        msgs = normalize_history(history) + [{"role": "user", "content": message}]
        source = reply_source(ctx, model, variant, request)   # endpoint:<name>: its variant is ignored
        source.load()
        cancel = ctx.cancels.start(session_id(request), "api")
        # on the reply pool's threads like the Chat tab's replies (warm OpenMP teams: see ui/loading.py)
        events = events_in_thread(source.stream(msgs, system_prompt or None, params, cancel), cancel)
        for event in events:
            if event is None:
                continue
            if event.done:
                stats = event.stats.to_dict()
                stats["badge"] = event.stats.badge()
                yield event.text, stats
            else:
                yield event.text, {}
    except PlaygroundError as exc:
        raise user_error(str(exc)) from None
    except Exception as exc:
        log.exception("/chat failed")
        raise user_error(f"unexpected error ({type(exc).__name__}): {exc}") from None


def register(ctx: UIContext) -> None:
    """Add the ``/chat`` endpoint to the Blocks being built (call inside ``with gr.Blocks()``)."""
    gr.api(bind(chat, ctx), api_name="chat")
