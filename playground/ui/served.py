"""Endpoints in the UI: what the Chat/Compare tabs and the /chat API call to treat ``endpoint:<name>`` like a local
model, and the Models tab's panel to add and remove endpoints.

An endpoint's "variant" is always ``served``: whatever the variant picker says is ignored for it.
"""
from __future__ import annotations

import html
import logging

import gradio as gr

from ..endpoints import VARIANT, Endpoint, describe_endpoint, is_endpoint_name
from ..errors import PlaygroundError
from .common import PRIVATE, UIContext, bind

log = logging.getLogger(__name__)

__all__ = ["endpoint_for", "endpoint_status", "model_choices", "build_panel", "VARIANT"]


def endpoint_for(ctx: UIContext, name, request: gr.Request | None = None) -> Endpoint | None:
    """The endpoint a model name means in the request's session, None for a local model; an unknown
    ``endpoint:x`` raises ModelNotFoundError naming the known ones."""
    if not is_endpoint_name(name):
        return None
    return ctx.endpoints_of(request).get(name)


def endpoint_status(ctx: UIContext, name: str, request: gr.Request | None = None, probe: bool = False) -> str:
    try:
        ep = ctx.endpoints_of(request).get(name)
    except PlaygroundError as exc:
        return f"✗ {html.escape(str(exc))}"
    line = describe_endpoint(ep)
    if probe:
        line += "  \n" + html.escape(ep.probe())
    return line


def model_choices(ctx: UIContext, current: str | None = None, request: gr.Request | None = None) -> list[str]:
    from ..catalog import CATALOG
    choices = list(CATALOG) + [m for m in ctx.policy.offered_models() if m not in CATALOG] + \
        ctx.endpoints_of(request).choices()
    if current and current not in choices:
        choices.append(current)
    return choices


# ---- Models tab panel ----------------------------------------------------------------------------------------
TABLE_COLUMNS = ["model name in Chat/Compare", "URL", "server model", "API key", "timeout s", "seen by"]


def endpoint_rows(ctx: UIContext, request: gr.Request | None = None) -> list[list]:
    reg = ctx.endpoints_of(request)
    return [[ep.choice, ep.url, ep.model or "(server's)", ep.key_source, ep.timeout_s,
             "this browser session" if reg is not ctx.endpoints and reg.owns(ep.name) else "everyone (set at launch)"]
            for ep in reg.all()]


def add(ctx: UIContext, url_value, model_value, name_value, key_value, request: gr.Request):
    """The Add endpoint button: (table, endpoint choice, key box cleared, message)."""
    try:
        ctx.policy.check_user_endpoint()
        # shared: a stranger's server that sends nothing waits at most the reply time limit, not 5 minutes
        ep = Endpoint(url=url_value, model=model_value or None, name=name_value or None,
                      api_key=key_value or None, public_only=ctx.policy.shared,
                      timeout_s=min(300.0, ctx.policy.reply_deadline_s or 300.0))
    except PlaygroundError as exc:
        # the key field is cleared in every case: a key never travels back to the browser
        return gr.skip(), gr.skip(), "", f"⚠ {html.escape(str(exc))}"
    reg = ctx.endpoints_of(request, create=True)
    replaced = ep.name in [e.name for e in reg.all()]
    reg.add(ep)
    log.info("endpoint %s added (%s) for one session", ep.choice, ep.url)
    verb = "replaced" if replaced else "added"
    note = (f"✓ {verb} **{html.escape(ep.choice)}** → {html.escape(ep.url)}: pick it as the model in Chat or "
            f"Compare (in this browser tab only).  \n{html.escape(ep.probe())}")
    return endpoint_rows(ctx, request), gr.Dropdown(choices=reg.choices(), value=ep.choice), "", note


def remove(ctx: UIContext, choice_value, request: gr.Request):
    """The Remove button: only an endpoint this session added goes; (table, endpoint choice, message)."""
    if not choice_value:
        return gr.skip(), gr.skip(), "Choose an endpoint to remove."
    reg = ctx.endpoints_of(request)
    if reg.owns(choice_value) and reg is not ctx.endpoints:
        reg.remove(choice_value)
        message = f"✗ removed {html.escape(choice_value)}"
    elif choice_value in reg:
        message = (f"{html.escape(choice_value)} was set when the app was launched (--endpoint or "
                   f"--endpoints-file) and is shared by every user: it cannot be removed here")
    else:
        message = f"{html.escape(choice_value)} is not known"
    names = reg.choices()
    return (endpoint_rows(ctx, request), gr.Dropdown(choices=names, value=names[0] if names else None), message)


def build_panel(ctx: UIContext) -> None:
    """The "Endpoints" section of the Models tab (call inside its ``gr.Tab``)."""
    gr.Markdown("### Endpoints (OpenAI-compatible servers)\nA vLLM, TGI, LMDeploy, llama.cpp or `transformers "
                "serve` server appears in Chat and Compare as `endpoint:<name>` (variant `served`). An endpoint added "
                "here is yours alone: other users of this app do not see it, and it is forgotten when this tab "
                "closes. The API key is kept in memory only and never shown again.", elem_id="endpoints-help")
    table = gr.Dataframe(value=endpoint_rows(ctx), headers=TABLE_COLUMNS, interactive=False, wrap=True,
                         elem_id="endpoints-table", label="Endpoints")
    if ctx.policy.shared and not ctx.policy.allow_user_endpoints:
        gr.Markdown("Adding endpoints is off on this shared app: the ones above are the host's.",
                    elem_id="endpoint-message")
        return table, None
    if ctx.policy.shared:
        gr.Markdown("On this shared app an added endpoint must be a public internet address.")
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

    add_btn.click(bind(add, ctx), [url, model, name, key], [table, choice, key, message], api_visibility=PRIVATE)
    remove_btn.click(bind(remove, ctx), [choice], [table, choice, message], api_visibility=PRIVATE)
    return table, choice

