"""The Chat tab's event handlers: send, regenerate, continue, edit (branch), undo, clear, stop, the context meter,
export/import, unload and the model pickers. Module level, ``fn(ctx, ...)``: ``chat_tab.wire_events`` binds them
to the page (``bind(fn, ctx)``) and tests call them directly. The Load button and the load bar are in
``loading``.

The conversation lives in a per-session ``gr.State`` as ``{"role", "content", "badge"}`` dicts; the Chatbot only
shows it (the badge is appended to the displayed reply, never sent back to the model).
"""
from __future__ import annotations

import functools
import logging
import time

import gradio as gr

from ..endpoints import is_endpoint_name
from ..errors import LoadCancelled, PlaygroundError
from ..manager import check_variant_available
from .common import (PARAM_NAMES, UIContext, badge_html, badge_text, describe_loaded, device_busy_note, params_from,
                     session_id, user_error)
from .conversation import ImportProblem, branch_at, meter_text, read_import, write_export
from .loading import (PrefillProgress, cancel_button, events_in_thread, load_bar_updates, note_html, prefill_note,
                      prompt_tokens, wait_note, warn_if_replying)
from .reply import reply_source
from .served import endpoint_status, model_choices

log = logging.getLogger(__name__)

PRESETS: dict[str, str] = {
    "Default assistant": "You are a helpful assistant.",
    "Concise": "You are a helpful assistant. Answer in one or two short sentences, without preamble.",
    "厨师 · Chef (中文)": "你是一位经验丰富的厨师，回答时先列出所需食材，再分步骤说明做法。",
    "Coding helper": ("You are an expert programmer. Answer with correct, minimal code in fenced code blocks, "
                      "then explain it briefly."),
    "None (model default)": "",
}
DEFAULT_PRESET = "Default assistant"


def to_display(history: list[dict], pending: str | None = None) -> list[dict]:
    """State → Chatbot messages; assistant replies get their badge; ``pending`` is a reply still streaming."""
    out = []
    for m in history:
        content = m["content"]
        if m["role"] == "assistant" and m.get("badge"):
            content = f"{content}\n\n{badge_html(text=m['badge'])}"
        out.append({"role": m["role"], "content": content})
    if pending is not None:
        out.append({"role": "assistant", "content": pending or "…"})
    return out


def selection_status(ctx: UIContext, model: str, variant: str, request: gr.Request | None = None) -> str:
    if is_endpoint_name(model):
        return endpoint_status(ctx, model, request)
    try:
        lm = ctx.find(model, variant)
    except PlaygroundError as exc:    # a model this shared app does not offer, a name that is not text
        return f"✗ Not available: {exc}"
    if lm is not None:
        return describe_loaded(lm)
    reason = check_variant_available(variant, ctx.device or ctx.manager.device) if variant else None
    if reason:
        return f"✗ Not available: {reason}"
    return f"○ {model or '(no model)'} [{variant}] is not loaded: press **Load**, or just send a message."


# ---- handlers (``bind(fn, ctx)`` makes the event handler) ------------------------------------------------------------
N_OUT = 6   # chatbot, history, message box, status, load bar, Cancel button


def frame(chat=None, hist=None, box=None, status=None, bar=None, cancel=None) -> tuple:
    """One update of the reply events' outputs; None leaves an output as it is."""
    values = (chat, hist, box, status, bar, cancel)
    return tuple(gr.skip() if v is None else v for v in values)


def run_reply(ctx: UIContext, model_name, variant_name, hist, system_prompt, params: dict, request, progress,
              rollback, box):
    """Stream a reply to ``hist`` (ending with the user turn, or with a reply to continue). On errors restore
    ``rollback`` (history, message box). Yields (chatbot, history, message box, status, load bar, Cancel)."""
    sid = session_id(request)
    cancel = ctx.cancels.start(sid, "chat")
    ended = functools.partial(ctx.cancels.finish, sid, "chat", cancel)   # before each last frame: see loading.load
    continuing = hist[-1]["role"] == "assistant"        # Continue: the last reply grows
    prefix, base = (hist[-1]["content"], hist[:-1]) if continuing else ("", hist)
    try:
        gen_params = params_from(params)
        msgs = [{"role": m["role"], "content": m["content"]} for m in hist]
        source = reply_source(ctx, model_name, variant_name, request)
        if continuing and source.endpoint is not None:
            raise PlaygroundError("Continue works with local models: the OpenAI API has no way to "
                                  "continue a reply")
        waited = ""
        if source.needs_load:
            t0 = time.monotonic()
            for line, bar, shown in load_bar_updates(f"{model_name} [{variant_name}]", cancel, source.load):
                yield frame(to_display(base, pending=prefix), box=box, status=line, bar=bar, cancel=shown)
            waited = wait_note(source.loaded, time.monotonic() - t0)
        described = source.describe()
        busy = device_busy_note()
        described += f"  \n{busy}" if busy else ""
        n_prompt = None if source.endpoint is not None else prompt_tokens(source.loaded, msgs, system_prompt)
        # until the first token: a note above the conversation (a 20k-character prompt takes seconds to read)
        waiting = (f"◔ {prefill_note(n_prompt)}" if n_prompt is not None else
                   "◔ Waiting for the server…" if source.endpoint is not None else "")
        yield frame(to_display(base, pending=prefix), box=box, status=described,
                    bar=note_html(waiting) if waiting else "", cancel=cancel_button(False))
        event, started, read = None, False, PrefillProgress(n_prompt)
        events = source.stream(msgs, system_prompt, gen_params, cancel, on_prefill=read.update)
        for event in events_in_thread(events, cancel):
            if event is None:              # no token yet: a Stop during the prefill acts now, not at its end
                if cancel.is_set() and not started:
                    break
                progress_now = None if started else read.take()
                if progress_now is not None:       # a long prompt is read in chunks: how far it got
                    done, total = progress_now
                    yield frame(bar=note_html(f"◔ {prefill_note(total, done)}", done / max(total, 1)))
                continue
            if event.done:
                break
            yield frame(to_display(base, pending=prefix + event.text), bar=None if started else "")
            started = True
        if event is None or not event.done or (not started and not event.text
                                               and event.stats.finish_reason == "stopped"):   # before any token
            final = hist if continuing else base
            what = f" ({n_prompt} tokens)" if n_prompt is not None else ""
            ended()
            yield frame(to_display(final), final, status=f"{described}  \n■ Stopped while the model was processing "
                                                         f"the prompt{what}: no reply", bar="")
            return
        stats = event.stats
        badge = badge_text(stats, continue_hint=True)
        settings = {"model": model_name, "variant": variant_name, "system_prompt": system_prompt or "",
                    **{k: getattr(gen_params, k) for k in PARAM_NAMES}}
        final = base + [{"role": "assistant", "content": prefix + event.text,
                         "badge": f"{waited} · {badge}" if waited else badge, "stats": stats.to_dict(),
                         "settings": settings}]
        last = (f"  \nlast reply: {stats.prompt_tokens} prompt tokens → {stats.new_tokens} new "
                f"({stats.finish_reason}, {stats.mode} mode)")
        notes = "".join(f"  \nℹ {n}" for n in stats.notes)
        ended()
        yield frame(to_display(final), final, status=described + last + notes, bar="")
    except LoadCancelled as exc:        # the user's Cancel: no error, the message goes back to the box
        ended()
        yield frame(to_display(rollback[0]), rollback[0], rollback[1], f"■ Cancelled: {exc}", "",
                    cancel_button(False))
    except PlaygroundError as exc:
        ended()
        yield frame(to_display(rollback[0]), rollback[0], rollback[1], f"⚠ Error: {exc}", "",
                    cancel_button(False))
        raise user_error(str(exc)) from None
    except gr.Error:
        raise
    except Exception as exc:  # unexpected: log the traceback, show one line
        log.exception("chat reply failed")
        ended()
        yield frame(to_display(rollback[0]), rollback[0], rollback[1], f"⚠ Error: {type(exc).__name__}: {exc}",
                    "", cancel_button(False))
        raise user_error(f"unexpected error ({type(exc).__name__}): {exc}") from None
    finally:
        ended()


# gradio injects gr.Request / gr.Progress only into positional parameters; the generation parameters arrive as
# keyword arguments (the event's ``inputs_kwargs``), named as in PARAM_NAMES.
def send(ctx: UIContext, model_name, variant_name, text, hist, system_prompt, request: gr.Request,
         progress=gr.Progress(), **params):
    hist = list(hist or [])
    if warn_if_replying(ctx, request, "send (your message stays in the box)"):
        yield frame()
        return
    if not (text or "").strip():
        gr.Warning("The message is empty: type something to send.")
        yield frame()
        return
    new = hist + [{"role": "user", "content": text}]
    yield from run_reply(ctx, model_name, variant_name, new, system_prompt, params, request, progress, (hist, text),
                         "")


def regenerate(ctx: UIContext, model_name, variant_name, hist, system_prompt, request: gr.Request,
               progress=gr.Progress(), **params):
    hist = list(hist or [])
    if warn_if_replying(ctx, request, "regenerate"):
        yield frame()
        return
    base = hist[:-1] if hist and hist[-1]["role"] == "assistant" else hist
    if not base or base[-1]["role"] != "user":
        gr.Warning("Nothing to regenerate yet: send a message first.")
        yield frame()
        return
    yield from run_reply(ctx, model_name, variant_name, base, system_prompt, params, request, progress,
                         (hist, gr.skip()), gr.skip())


def continue_reply(ctx: UIContext, model_name, variant_name, hist, system_prompt, request: gr.Request,
                   progress=gr.Progress(), **params):
    hist = list(hist or [])
    if warn_if_replying(ctx, request, "continue"):
        yield frame()
        return
    if not hist or hist[-1]["role"] != "assistant" or not hist[-1]["content"].strip():
        gr.Warning("Nothing to continue yet: Continue extends the last reply (one cut at its token limit).")
        yield frame()
        return
    yield from run_reply(ctx, model_name, variant_name, hist, system_prompt, params, request, progress,
                         (hist, gr.skip()), gr.skip())


def edit_message(ctx: UIContext, model_name, variant_name, hist, system_prompt, edit: gr.EditData,
                 request: gr.Request, progress=gr.Progress(), **params):
    """An earlier user message edited in the conversation: the conversation branches there (what came after it
    is dropped) and the model answers the edited message."""
    hist = list(hist or [])
    if warn_if_replying(ctx, request, "edit"):
        yield frame(to_display(hist))
        return
    try:
        branch = branch_at(hist, edit.index, edit.value)
    except PlaygroundError as exc:
        gr.Warning(str(exc))
        yield frame(to_display(hist))
        return
    yield from run_reply(ctx, model_name, variant_name, branch, system_prompt, params, request, progress,
                         (hist, gr.skip()), gr.skip())


def context_meter(ctx: UIContext, model_name, variant_name, hist, system_prompt, max_new_tokens,
                  request: gr.Request = None) -> str:
    """The line beside the input: the conversation's tokens + the reply's budget, of the model's context."""
    if is_endpoint_name(model_name):
        return meter_text(None, hist, system_prompt, max_new_tokens, endpoint=True)
    try:
        lm = ctx.find(model_name, variant_name)
    except PlaygroundError:
        return ""
    return meter_text(lm, list(hist or []), system_prompt, max_new_tokens)


def export_json(model_name, variant_name, hist, system_prompt, **params):
    return _export(model_name, variant_name, hist, system_prompt, params, "json")


def export_markdown(model_name, variant_name, hist, system_prompt, **params):
    return _export(model_name, variant_name, hist, system_prompt, params, "md")


def _export(model_name, variant_name, hist, system_prompt, params, kind):
    if not hist:
        gr.Warning("Nothing to export yet: the conversation is empty.")
        return gr.skip()
    return gr.File(value=write_export(list(hist), system_prompt, model_name, variant_name, params, kind),
                   visible=True)


def import_conversation(ctx: UIContext, model_name, variant_name, upload, request: gr.Request):
    """A conversation file (Export JSON) → the conversation and its system prompt; a bad file → one line."""
    if warn_if_replying(ctx, request, "import"):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    path = getattr(upload, "name", upload)
    if not path:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    try:
        data = read_import(path)
    except ImportProblem as exc:
        gr.Warning(f"Cannot import: {exc}")
        return gr.skip(), gr.skip(), gr.skip(), f"⚠ Error: cannot import {exc}"
    hist = data["messages"]
    status = selection_status(ctx, model_name, variant_name, request)
    status += f"  \n✓ Imported: {len(hist)} messages"
    return to_display(hist), hist, data["system_prompt"], status


def undo(ctx: UIContext, model_name, variant_name, hist, request: gr.Request):
    """Take back the last exchange (its message returns to the box); the status drops its "last reply" line."""
    if warn_if_replying(ctx, request, "undo"):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    hist = list(hist or [])
    if hist and hist[-1]["role"] == "assistant":
        hist.pop()
    text = hist.pop()["content"] if hist and hist[-1]["role"] == "user" else gr.skip()
    return to_display(hist), hist, text, selection_status(ctx, model_name, variant_name, request)


def clear(ctx: UIContext, model_name, variant_name, request: gr.Request):
    if warn_if_replying(ctx, request, "clear"):
        return gr.skip(), gr.skip(), gr.skip()
    return [], [], selection_status(ctx, model_name, variant_name, request)


def stop(ctx: UIContext, request: gr.Request):
    ctx.cancels.stop(session_id(request), "chat")


def unload(ctx: UIContext, model_name, variant_name):
    try:
        name = ctx.policy.model_name((model_name or "").strip())
    except PlaygroundError as exc:
        return f"✗ {exc}"
    done, kept = ctx.unload_idle(name, variant_name)
    if done:
        return f"⏏ unloaded {model_name} [{variant_name}]: memory returned"
    if kept:
        return f"○ {model_name} [{variant_name}] is generating a reply for another user: kept"
    return f"○ {model_name} [{variant_name}] was not loaded"


def preset_text(preset):
    return PRESETS.get(preset, gr.skip())


def refresh_models(ctx: UIContext, model_name, request: gr.Request):
    """Endpoints added in the Models tab join the model list when the tab is opened again."""
    return gr.Dropdown(choices=model_choices(ctx, model_name, request))


def show_selection(ctx: UIContext, model_name, variant_name, request: gr.Request):
    return selection_status(ctx, model_name, variant_name, request)
