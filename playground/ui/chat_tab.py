"""Chat tab: pick a model × variant, load it, chat with a streaming reply and a stats badge under each answer.

The conversation lives in a per-session ``gr.State`` as ``{"role", "content", "badge"}`` dicts; the Chatbot only
shows it (the badge is appended to the displayed reply, never sent back to the model).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import gradio as gr

from ..endpoints import is_endpoint_name
from ..errors import PlaygroundError
from ..manager import check_variant_available
from .common import (PRIVATE, ParamWidgets, UIContext, badge_html, badge_text, bind, describe_loaded, device_busy_note,
                     model_dropdown, params_accordion, params_from, session_id, user_error, variant_dropdown)
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
        return f"⛔ {exc}"
    if lm is not None:
        return describe_loaded(lm)
    reason = check_variant_available(variant, ctx.device or ctx.manager.device) if variant else None
    if reason:
        return f"⛔ {reason}"
    return f"⚪ {model or '(no model)'} [{variant}] is not loaded: press **Load**, or just send a message."


@dataclass
class ChatUI:
    """The Chat tab's components (``create_ui``), wired to the handlers below by ``wire_events``."""
    tab: gr.Tab
    history: gr.State
    model: gr.Dropdown
    variant: gr.Dropdown
    load_btn: gr.Button
    unload_btn: gr.Button
    status: gr.Markdown
    preset: gr.Dropdown
    system: gr.Textbox
    params: ParamWidgets
    chatbot: gr.Chatbot
    message: gr.Textbox
    send_btn: gr.Button
    stop_btn: gr.Button
    regen_btn: gr.Button
    continue_btn: gr.Button
    undo_btn: gr.Button
    clear_btn: gr.Button


# ---- handlers (module level: tests import them; ``bind(fn, ctx)`` makes the event handler) -----------------------
def run_reply(ctx: UIContext, model_name, variant_name, hist, system_prompt, params: dict, request, progress,
              rollback, box):
    """Stream a reply to ``hist`` (ending with the user turn, or with a reply to continue). On errors restore
    ``rollback`` (history, message box). Yields (chatbot, history, message box, status)."""
    cancel = ctx.cancels.start(session_id(request), "chat")
    continuing = hist[-1]["role"] == "assistant"        # Continue: the last reply grows
    prefix, base = (hist[-1]["content"], hist[:-1]) if continuing else ("", hist)
    try:
        gen_params = params_from(params)
        msgs = [{"role": m["role"], "content": m["content"]} for m in hist]
        source = reply_source(ctx, model_name, variant_name, request)
        if continuing and source.endpoint is not None:
            raise PlaygroundError("Continue works with local models: the OpenAI API has no way to "
                                  "continue a reply")
        if source.needs_load:
            yield (to_display(base, pending=prefix), gr.skip(), box,
                   f"⏳ loading {model_name} [{variant_name}] …")
            source.load(progress)
        described, events = source.describe(), source.stream(msgs, system_prompt, gen_params, cancel)
        busy = device_busy_note()
        described += f"  \n{busy}" if busy else ""
        yield to_display(base, pending=prefix), gr.skip(), box, described
        event = None
        for event in events:
            if event.done:
                break
            yield to_display(base, pending=prefix + event.text), gr.skip(), gr.skip(), gr.skip()
        stats = event.stats
        final = base + [{"role": "assistant", "content": prefix + event.text,
                         "badge": badge_text(stats, continue_hint=True)}]
        last = (f"  \nlast reply: {stats.prompt_tokens} prompt tokens → {stats.new_tokens} new "
                f"({stats.finish_reason}, {stats.mode} mode)")
        notes = "".join(f"  \nℹ️ {n}" for n in stats.notes)
        yield to_display(final), final, gr.skip(), described + last + notes
    except PlaygroundError as exc:
        yield to_display(rollback[0]), rollback[0], rollback[1], f"⚠️ {exc}"
        raise user_error(str(exc)) from None
    except gr.Error:
        raise
    except Exception as exc:  # unexpected: log the traceback, show one line
        log.exception("chat reply failed")
        yield to_display(rollback[0]), rollback[0], rollback[1], f"⚠️ {type(exc).__name__}: {exc}"
        raise user_error(f"unexpected error ({type(exc).__name__}): {exc}") from None


# gradio injects gr.Request / gr.Progress only into positional parameters; the generation parameters arrive as
# keyword arguments (the event's ``inputs_kwargs``), named as in PARAM_NAMES.
def send(ctx: UIContext, model_name, variant_name, text, hist, system_prompt, request: gr.Request,
         progress=gr.Progress(), **params):
    hist = list(hist or [])
    if not (text or "").strip():
        gr.Warning("The message is empty: type something to send.")
        yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return
    new = hist + [{"role": "user", "content": text}]
    yield from run_reply(ctx, model_name, variant_name, new, system_prompt, params, request, progress, (hist, text),
                         "")


def regenerate(ctx: UIContext, model_name, variant_name, hist, system_prompt, request: gr.Request,
               progress=gr.Progress(), **params):
    hist = list(hist or [])
    base = hist[:-1] if hist and hist[-1]["role"] == "assistant" else hist
    if not base or base[-1]["role"] != "user":
        gr.Warning("Nothing to regenerate yet: send a message first.")
        yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return
    yield from run_reply(ctx, model_name, variant_name, base, system_prompt, params, request, progress,
                         (hist, gr.skip()), gr.skip())


def continue_reply(ctx: UIContext, model_name, variant_name, hist, system_prompt, request: gr.Request,
                   progress=gr.Progress(), **params):
    hist = list(hist or [])
    if not hist or hist[-1]["role"] != "assistant" or not hist[-1]["content"].strip():
        gr.Warning("Nothing to continue yet: Continue extends the last reply (one cut at its token limit).")
        yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
        return
    yield from run_reply(ctx, model_name, variant_name, hist, system_prompt, params, request, progress,
                         (hist, gr.skip()), gr.skip())


def undo(hist):
    hist = list(hist or [])
    if hist and hist[-1]["role"] == "assistant":
        hist.pop()
    text = hist.pop()["content"] if hist and hist[-1]["role"] == "user" else gr.skip()
    return to_display(hist), hist, text


def clear():
    return [], []


def stop(ctx: UIContext, request: gr.Request):
    ctx.cancels.stop(session_id(request), "chat")


def load(ctx: UIContext, model_name, variant_name, request: gr.Request, progress=gr.Progress()):
    if is_endpoint_name(model_name):   # nothing to load: say whether the server answers
        return endpoint_status(ctx, model_name, request, probe=True)
    try:
        return describe_loaded(ctx.load(model_name, variant_name, progress))
    except PlaygroundError as exc:
        raise user_error(str(exc)) from None


def unload(ctx: UIContext, model_name, variant_name):
    try:
        name = ctx.policy.model_name((model_name or "").strip())
    except PlaygroundError as exc:
        return f"⛔ {exc}"
    done, kept = ctx.unload_idle(name, variant_name)
    if done:
        return f"⏏️ unloaded {model_name} [{variant_name}]: memory returned"
    if kept:
        return f"⚪ {model_name} [{variant_name}] is generating a reply for another user: kept"
    return f"⚪ {model_name} [{variant_name}] was not loaded"


def preset_text(preset):
    return PRESETS.get(preset, gr.skip())


def refresh_models(ctx: UIContext, model_name, request: gr.Request):
    """Endpoints added in the Models tab join the model list when the tab is opened again."""
    return gr.Dropdown(choices=model_choices(ctx, model_name, request))


def show_selection(ctx: UIContext, model_name, variant_name, request: gr.Request):
    return selection_status(ctx, model_name, variant_name, request)


# ---- layout and wiring --------------------------------------------------------------------------------------------
def create_ui(ctx: UIContext) -> ChatUI:
    with gr.Tab("Chat", id="chat", elem_id="tab-chat") as tab:
        history = gr.State([])
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=300, elem_id="chat-sidebar"):
                model = model_dropdown(ctx, elem_id="chat-model")
                variant = variant_dropdown(ctx.default_variant, elem_id="chat-variant")
                with gr.Row():
                    load_btn = gr.Button("Load", variant="primary", size="sm", min_width=80, elem_id="chat-load")
                    unload_btn = gr.Button("Unload", size="sm", min_width=80, elem_id="chat-unload")
                status = gr.Markdown(selection_status(ctx, ctx.default_model, ctx.default_variant),
                                     elem_id="chat-status", elem_classes=["status-line"])
                preset = gr.Dropdown(choices=list(PRESETS), value=DEFAULT_PRESET, label="System prompt preset",
                                     elem_id="chat-preset")
                system = gr.Textbox(value=PRESETS[DEFAULT_PRESET], label="System prompt", lines=3,
                                    elem_id="chat-system")
                params = params_accordion("chat")
            with gr.Column(scale=3, min_width=400):
                chatbot = gr.Chatbot(label="Conversation", height=500, elem_id="chat-chatbot",
                                     buttons=["copy", "copy_all"], feedback_options=None,
                                     placeholder="Ask something. Replies stream in; the line under each reply "
                                                 "shows time to first token, speed, tokens and peak memory.")
                with gr.Row(equal_height=True):
                    # lines=1: Gradio sends on Enter and lets Shift+Enter add a line (lines > 1: the other way round)
                    message = gr.Textbox(show_label=False, lines=1, max_lines=8, scale=6, elem_id="chat-input",
                                         placeholder="Type a message (Enter sends, Shift+Enter adds a line)")
                    send_btn = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="chat-send")
                with gr.Row():
                    stop_btn = gr.Button("Stop", variant="stop", size="sm", elem_id="chat-stop")
                    regen_btn = gr.Button("Regenerate", size="sm", elem_id="chat-regenerate")
                    continue_btn = gr.Button("Continue", size="sm", elem_id="chat-continue")
                    undo_btn = gr.Button("Undo", size="sm", elem_id="chat-undo")
                    clear_btn = gr.Button("Clear", size="sm", elem_id="chat-clear")
    return ChatUI(tab, history, model, variant, load_btn, unload_btn, status, preset, system, params, chatbot,
                  message, send_btn, stop_btn, regen_btn, continue_btn, undo_btn, clear_btn)


def wire_events(ctx: UIContext, ui: ChatUI) -> None:
    out = [ui.chatbot, ui.history, ui.message, ui.status]
    reply = dict(outputs=out, inputs_kwargs=ui.params.as_kwargs(), api_visibility=PRIVATE,
                 show_progress="minimal", show_progress_on=[ui.status])
    for trigger in (ui.send_btn.click, ui.message.submit):
        trigger(bind(send, ctx), [ui.model, ui.variant, ui.message, ui.history, ui.system], **reply)
    ui.regen_btn.click(bind(regenerate, ctx), [ui.model, ui.variant, ui.history, ui.system], **reply)
    ui.continue_btn.click(bind(continue_reply, ctx), [ui.model, ui.variant, ui.history, ui.system], **reply)
    ui.stop_btn.click(bind(stop, ctx), None, None, queue=False, api_visibility=PRIVATE)
    ui.undo_btn.click(undo, [ui.history], [ui.chatbot, ui.history, ui.message], queue=False, api_visibility=PRIVATE)
    ui.clear_btn.click(clear, None, [ui.chatbot, ui.history], queue=False, api_visibility=PRIVATE)
    ui.chatbot.clear(lambda: [], None, [ui.history], queue=False, api_visibility=PRIVATE)  # the 🗑 icon
    ui.load_btn.click(bind(load, ctx), [ui.model, ui.variant], [ui.status], api_visibility=PRIVATE)
    ui.unload_btn.click(bind(unload, ctx), [ui.model, ui.variant], [ui.status], api_visibility=PRIVATE)
    ui.preset.change(preset_text, [ui.preset], [ui.system], queue=False, api_visibility=PRIVATE)
    ui.tab.select(bind(refresh_models, ctx), [ui.model], [ui.model], queue=False, api_visibility=PRIVATE)
    for dd in (ui.model, ui.variant):
        dd.change(bind(show_selection, ctx), [ui.model, ui.variant], [ui.status], queue=False,
                  api_visibility=PRIVATE)


def build_tab(ctx: UIContext) -> ChatUI:
    ui = create_ui(ctx)
    wire_events(ctx, ui)
    return ui
