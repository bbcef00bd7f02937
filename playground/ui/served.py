"""Endpoints in the UI: what the Chat/Compare tabs and the /chat API call to treat ``endpoint:<name>`` like a local
model, and the Models tab's panel to add and remove endpoints.

An endpoint's "variant" is always ``served``: whatever the variant picker says is ignored for it.
"""
from __future__ import annotations

import html
import logging

import gradio as gr

from ..endpoints import (VARIANT, Endpoint, describe_endpoint, is_endpoint_name,
                         stream_endpoint_reply)
from ..errors import PlaygroundError
from .common import PRIVATE, UIContext

log = logging.getLogger(__name__)

__all__ = ["endpoint_for", "endpoint_status", "reply_events", "model_choices", "build_panel", "VARIANT"]


def endpoint_for(ctx: UIContext, name) -> Endpoint | None:
    """The endpoint a model name means, None for a local model; an unknown ``endpoint:x`` raises
    ModelNotFoundError naming the known ones."""
    if not is_endpoint_name(name):
        return None
    return ctx.endpoints.get(name)


def endpoint_status(ctx: UIContext, name: str, probe: bool = False) -> str:
    try:
        ep = ctx.endpoints.get(name)
    except PlaygroundError as exc:
        return f"⛔ {html.escape(str(exc))}"
    line = describe_endpoint(ep)
    if probe:
        line += "  \n" + html.escape(ep.probe())
    return line


def reply_events(ep: Endpoint, msgs, system_prompt, params, cancel):
    return stream_endpoint_reply(ep, msgs, system_prompt, params, cancel)


def model_choices(ctx: UIContext, current: str | None = None) -> list[str]:
    from ..catalog import CATALOG
    choices = list(CATALOG) + ctx.endpoints.choices()
    if current and current not in choices:
        choices.append(current)
    return choices


# ---- Models tab panel ----------------------------------------------------------------------------------------
TABLE_COLUMNS = ["model name in Chat/Compare", "URL", "server model", "API key", "timeout s"]


def endpoint_rows(ctx: UIContext) -> list[list]:
    return [[ep.choice, ep.url, ep.model or "(server's)", ep.key_source, ep.timeout_s] for ep in ctx.endpoints.all()]


def build_panel(ctx: UIContext) -> None:
    """The "Endpoints" section of the Models tab (call inside its ``gr.Tab``)."""
    gr.Markdown("### Endpoints (OpenAI-compatible servers)\nA vLLM, TGI, LMDeploy, llama.cpp or `transformers "
                "serve` server appears in Chat and Compare as `endpoint:<name>` (variant `served`). The API key is "
                "kept in memory only and never shown again.", elem_id="endpoints-help")
    table = gr.Dataframe(value=endpoint_rows(ctx), headers=TABLE_COLUMNS, interactive=False, wrap=True,
                         elem_id="endpoints-table", label="Endpoints")
    with gr.Row(equal_height=False):
        url = gr.Textbox(label="Base URL", placeholder="http://127.0.0.1:8000/v1", scale=3, elem_id="endpoint-url")
        model = gr.Textbox(label="Model name (optional)", placeholder="as the server calls it", scale=2,
                           elem_id="endpoint-model")
        name = gr.Textbox(label="Short name (optional)", placeholder="host:port", scale=1, elem_id="endpoint-name")
        key = gr.Textbox(label="API key (optional)", type="password", scale=2, elem_id="endpoint-key")
    with gr.Row(equal_height=False):
        add_btn = gr.Button("Add endpoint", variant="primary", scale=1, min_width=120, elem_id="endpoint-add")
        choice = gr.Dropdown(choices=ctx.endpoints.choices(), value=None, label="Endpoint to remove", scale=3,
                             elem_id="endpoint-choice")
        remove_btn = gr.Button("Remove", variant="stop", scale=1, min_width=100, elem_id="endpoint-remove")
    message = gr.Markdown("", elem_id="endpoint-message")

    def add(url_value, model_value, name_value, key_value):
        try:
            ep = Endpoint(url=url_value, model=model_value or None, name=name_value or None,
                          api_key=key_value or None)
        except PlaygroundError as exc:
            # the key field is cleared in every case: a key never travels back to the browser
            return gr.skip(), gr.skip(), "", f"⚠️ {html.escape(str(exc))}"
        replaced = ep.name in [e.name for e in ctx.endpoints.all()]
        ctx.endpoints.add(ep)
        log.info("endpoint %s added (%s)", ep.choice, ep.url)
        verb = "replaced" if replaced else "added"
        note = (f"✅ {verb} **{html.escape(ep.choice)}** → {html.escape(ep.url)}: pick it as the model in Chat or "
                f"Compare.  \n{html.escape(ep.probe())}")
        return endpoint_rows(ctx), gr.Dropdown(choices=ctx.endpoints.choices(), value=ep.choice), "", note

    def remove(choice_value):
        if not choice_value:
            return gr.skip(), gr.skip(), "Choose an endpoint to remove."
        ok = ctx.endpoints.remove(choice_value)
        names = ctx.endpoints.choices()
        return (endpoint_rows(ctx), gr.Dropdown(choices=names, value=names[0] if names else None),
                f"🗑 removed {html.escape(choice_value)}" if ok else f"{html.escape(choice_value)} is not known")

    add_btn.click(add, [url, model, name, key], [table, choice, key, message], api_visibility=PRIVATE)
    remove_btn.click(remove, [choice], [table, choice, message], api_visibility=PRIVATE)
    return table, choice

