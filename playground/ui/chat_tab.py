"""Chat tab: pick a model × variant, load it, chat with a streaming reply and a stats badge under each answer.

This module is the layout (``create_ui``) and the wiring (``wire_events``); the handlers are in
``chat_handlers``, the Load button and its bar in ``loading``.
"""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from .chat_handlers import (DEFAULT_PRESET, PRESETS, clear, context_meter, continue_reply, edit_message,
                            export_json, export_markdown, import_conversation, preset_text, refresh_models,
                            regenerate, selection_status, send, show_selection, stop, undo, unload)
from .common import PRIVATE, ParamWidgets, UIContext, bind, model_dropdown, params_accordion, variant_dropdown
from .loading import load


@dataclass
class ChatUI:
    """The Chat tab's components (``create_ui``), wired to the handlers of ``chat_handlers`` by ``wire_events``."""
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
    loadbar: gr.HTML
    cancel_btn: gr.Button
    chatbot: gr.Chatbot
    message: gr.Textbox
    send_btn: gr.Button
    stop_btn: gr.Button
    regen_btn: gr.Button
    continue_btn: gr.Button
    undo_btn: gr.Button
    clear_btn: gr.Button
    meter: gr.Markdown
    export_json_btn: gr.Button
    export_md_btn: gr.Button
    import_btn: gr.UploadButton
    export_file: gr.File


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
                # open on a wide screen; on a phone (the conversation comes first) app.PHONE_JS closes it
                with gr.Accordion("Settings (system prompt, parameters)", open=True,
                                  elem_id="chat-settings"):
                    preset = gr.Dropdown(choices=list(PRESETS), value=DEFAULT_PRESET, label="System prompt preset",
                                         elem_id="chat-preset")
                    system = gr.Textbox(value=PRESETS[DEFAULT_PRESET], label="System prompt", lines=3,
                                        elem_id="chat-system")
                    params = params_accordion("chat")
            with gr.Column(scale=3, min_width=400, elem_id="chat-main"):
                with gr.Row(equal_height=True, elem_id="chat-loading"):
                    loadbar = gr.HTML("", elem_id="chat-loadbar", padding=False)
                    cancel_btn = gr.Button("Cancel loading", variant="stop", size="sm", visible=False, scale=0,
                                           min_width=130, elem_id="chat-cancel-load")
                chatbot = gr.Chatbot(label="Conversation", height=500, elem_id="chat-chatbot",
                                     buttons=["copy", "copy_all"], feedback_options=None, editable="user",
                                     placeholder="Ask something. Replies stream in; the line under each reply "
                                                 "shows time to first token, speed, tokens and peak memory.")
                with gr.Row(equal_height=True):
                    # lines=1: Gradio sends on Enter and lets Shift+Enter add a line (lines > 1: the other way round)
                    message = gr.Textbox(show_label=False, lines=1, max_lines=8, scale=6, elem_id="chat-input",
                                         placeholder="Type a message (Enter sends, Shift+Enter adds a line)")
                    send_btn = gr.Button("Send", variant="primary", scale=1, min_width=90, elem_id="chat-send")
                with gr.Row(elem_id="chat-actions", elem_classes=["button-row"]):
                    stop_btn = gr.Button("Stop", variant="stop", size="sm", min_width=60, elem_id="chat-stop")
                    regen_btn = gr.Button("Regenerate", size="sm", min_width=60, elem_id="chat-regenerate")
                    continue_btn = gr.Button("Continue", size="sm", min_width=60, elem_id="chat-continue")
                    undo_btn = gr.Button("Undo", size="sm", min_width=60, elem_id="chat-undo")
                    clear_btn = gr.Button("Clear", size="sm", min_width=60, elem_id="chat-clear")
                meter = gr.Markdown(context_meter(ctx, ctx.default_model, ctx.default_variant, [],
                                                  PRESETS[DEFAULT_PRESET], params.max_new_tokens.value),
                                    elem_id="chat-context", elem_classes=["context-meter"])
                with gr.Row(elem_id="chat-conversation-files", elem_classes=["button-row"]):
                    export_json_btn = gr.Button("Export JSON", size="sm", min_width=60, elem_id="chat-export-json")
                    export_md_btn = gr.Button("Export Markdown", size="sm", min_width=60, elem_id="chat-export-md")
                    import_btn = gr.UploadButton("Import JSON", file_types=[".json"], file_count="single",
                                                 size="sm", min_width=60, elem_id="chat-import")
                export_file = gr.File(label="Exported conversation", visible=False, interactive=False,
                                      elem_id="chat-export-file")
    return ChatUI(tab, history, model, variant, load_btn, unload_btn, status, preset, system, params, loadbar,
                  cancel_btn, chatbot, message, send_btn, stop_btn, regen_btn, continue_btn, undo_btn, clear_btn,
                  meter, export_json_btn, export_md_btn, import_btn, export_file)


def wire_events(ctx: UIContext, ui: ChatUI) -> None:
    out = [ui.chatbot, ui.history, ui.message, ui.status, ui.loadbar, ui.cancel_btn]
    # trigger_mode "multiple": a Send (or Regenerate, Continue) while a reply generates reaches the handler, which
    # says so, instead of the page dropping the click without a word
    reply = dict(outputs=out, inputs_kwargs=ui.params.as_kwargs(), api_visibility=PRIVATE, trigger_mode="multiple",
                 show_progress="minimal", show_progress_on=[ui.status])
    meter = dict(fn=bind(context_meter, ctx), inputs=[ui.model, ui.variant, ui.history, ui.system,
                                                      ui.params.max_new_tokens],
                 outputs=[ui.meter], queue=False, api_visibility=PRIVATE, show_progress="hidden")
    for trigger in (ui.send_btn.click, ui.message.submit):
        trigger(bind(send, ctx), [ui.model, ui.variant, ui.message, ui.history, ui.system], **reply).then(**meter)
    ui.regen_btn.click(bind(regenerate, ctx), [ui.model, ui.variant, ui.history, ui.system], **reply).then(**meter)
    ui.continue_btn.click(bind(continue_reply, ctx), [ui.model, ui.variant, ui.history, ui.system],
                          **reply).then(**meter)
    ui.chatbot.edit(bind(edit_message, ctx), [ui.model, ui.variant, ui.history, ui.system], **reply).then(**meter)
    for button in (ui.stop_btn, ui.cancel_btn):
        button.click(bind(stop, ctx), None, None, queue=False, api_visibility=PRIVATE)
    # queued (not queue=False): a warning (a reply is generating) reaches the page only from a queued event
    ui.undo_btn.click(bind(undo, ctx), [ui.model, ui.variant, ui.history], [ui.chatbot, ui.history, ui.message,
                                                                            ui.status],
                      api_visibility=PRIVATE, show_progress="hidden").then(**meter)
    ui.clear_btn.click(bind(clear, ctx), [ui.model, ui.variant], [ui.chatbot, ui.history, ui.status],
                       api_visibility=PRIVATE, show_progress="hidden").then(**meter)
    # the Chatbot's own trash button
    ui.chatbot.clear(lambda: [], None, [ui.history], queue=False, api_visibility=PRIVATE).then(**meter)
    ui.load_btn.click(bind(load, ctx), [ui.model, ui.variant], [ui.status, ui.loadbar, ui.cancel_btn],
                      api_visibility=PRIVATE, show_progress="hidden").then(**meter)
    files = [ui.model, ui.variant, ui.history, ui.system]
    ui.export_json_btn.click(export_json, files, [ui.export_file], inputs_kwargs=ui.params.as_kwargs(),
                             api_visibility=PRIVATE)
    ui.export_md_btn.click(export_markdown, files, [ui.export_file], inputs_kwargs=ui.params.as_kwargs(),
                           api_visibility=PRIVATE)
    ui.import_btn.upload(bind(import_conversation, ctx), [ui.model, ui.variant, ui.import_btn],
                         [ui.chatbot, ui.history, ui.system, ui.status], api_visibility=PRIVATE).then(**meter)
    ui.params.max_new_tokens.change(**meter)
    ui.system.blur(**meter)
    ui.unload_btn.click(bind(unload, ctx), [ui.model, ui.variant], [ui.status], api_visibility=PRIVATE)
    ui.preset.change(preset_text, [ui.preset], [ui.system], queue=False, api_visibility=PRIVATE)
    ui.tab.select(bind(refresh_models, ctx), [ui.model], [ui.model], queue=False, api_visibility=PRIVATE)
    for dd in (ui.model, ui.variant):
        dd.change(bind(show_selection, ctx), [ui.model, ui.variant], [ui.status], queue=False,
                  api_visibility=PRIVATE).then(**meter)


def build_tab(ctx: UIContext) -> ChatUI:
    ui = create_ui(ctx)
    wire_events(ctx, ui)
    return ui
