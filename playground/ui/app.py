"""Compose the web UI from its tabs.

Every tab lives in its own module with ``build_tab(ctx: UIContext) -> None``, which creates its own ``gr.Tab``
inside the ``gr.Tabs`` opened here. To add a tab, add a module and a line to ``TAB_MODULES``; tabs of other
packages (the Benchmark tab, ``benchmarks/ui_tab.py``) are ``playground.tabs`` plugins (``plugins.py``).
"""
from __future__ import annotations

import importlib
from collections.abc import Iterable

import gradio as gr

from ..catalog import DEFAULT_MODEL
from ..endpoints import EndpointRegistry
from ..manager import ModelManager
from ..sharing import SharingPolicy
from . import api, plugins
from .common import PRIVATE, UIContext

TAB_MODULES = ("chat_tab", "compare_tab", "models_tab")

APP_CSS = """
.reply-badge { display: inline-block; margin-top: 2px; font-size: 0.78em; opacity: 0.75;
               font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.status-line { font-size: 0.9em; min-height: 1.5em; }
.compare-slot { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px; }
.compare-reply { min-height: 120px; }
#compare-badge-0, #compare-badge-1, #compare-badge-2, #compare-badge-3 { font-size: 0.78em; opacity: 0.8; }
footer { display: none !important; }
/* load bars (Chat above the conversation, Compare in the slot): the line wraps, it is never cut */
.load-bar { width: 100%; }
.load-bar-track { height: 8px; border-radius: 4px; background: var(--neutral-200); overflow: hidden; }
.load-bar-fill { height: 100%; background: var(--color-accent); transition: width 0.4s ease; }
.load-bar-text { font-size: 0.9em; margin-top: 4px; white-space: normal; overflow-wrap: anywhere; }
#chat-loading { gap: 8px; align-items: center; }
#chat-loading:not(:has(.load-bar)) { display: none; }
.status-line, .status-line * { white-space: normal; overflow-wrap: anywhere; }
/* a failed event's "Error" pill sat on the status text, which already says "⚠ Error: ..." (the toast has it too) */
.status-line [data-testid="status-tracker"]:has(.error) { display: none !important; }
.context-meter { font-size: 0.85em; opacity: 0.85; }
/* tables scroll sideways instead of breaking words one letter per line */
.table-wrap, [data-testid="dataframe"] .table-wrap { overflow-x: auto !important; }
table th, table td { word-break: normal !important; overflow-wrap: normal !important; }
@media (max-width: 700px) {
  #app-header p { display: none; }                          /* the title stays, the blurb goes */
  #chat-main { order: -1; }                                  /* the conversation and the input first */
  #chat-chatbot { height: 52vh !important; }
  .button-row { flex-wrap: wrap !important; gap: 6px !important; }
  .button-row > * { flex: 1 1 28% !important; min-width: 0 !important; }
  /* every tab in the bar (Gradio moves the ones that do not fit into a "…" menu) */
  .tab-wrapper .tab-container button { padding: 0 8px !important; font-size: 14px !important; }
  /* Gradio sizes each column to its share of the (narrow) table: fixed widths instead, and the table scrolls */
  .table-wrap table { width: max-content !important; }
  /* (tables without column widths of their own; the Models table has pixel widths) */
  .table-wrap th:not(#models-table *), .table-wrap td:not(#models-table *) {
    width: 112px !important; min-width: 112px !important; max-width: 112px !important; }
  .table-wrap th:last-child:not(#models-table *), .table-wrap td:last-child:not(#models-table *) {
    width: 240px !important; min-width: 240px !important; max-width: 240px !important; }
  .table-wrap td *, .table-wrap th * { word-break: normal !important; overflow-wrap: normal !important; }
}
"""
# On a phone the Chat tab's settings start closed (the conversation and the input come first).
PHONE_JS = """() => {
  const done = () => { document.body.dataset.phoneLayout = 'ready'; };   // tests wait for this before clicking
  if (!window.matchMedia('(max-width: 700px)').matches) { done(); return; }
  const close = (tries) => {
    const button = document.querySelector('#chat-settings > button.label-wrap, #chat-settings button.label-wrap');
    if (button) { if (button.classList.contains('open')) button.click(); done(); return; }
    if (tries > 0) setTimeout(() => close(tries - 1), 200); else done();
  };
  close(50);
}"""
# System fonts only: the default Google fonts cannot load on offline machines and delay the first paint.
THEME = gr.themes.Soft(font=["ui-sans-serif", "system-ui", "sans-serif"],
                       font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"])


def tab_modules(names: Iterable[str] = TAB_MODULES) -> list:
    return [importlib.import_module(f"{__package__}.{n}") for n in names] + plugins.tab_plugins()


def build_app(manager: ModelManager, default_model: str = DEFAULT_MODEL, default_variant: str = "bf16",
              device: str | None = None, trusted_models: Iterable[str] = (),
              title: str = "LLM quantization playground", endpoints=None, policy=None) -> gr.Blocks:
    """The whole UI as a ``gr.Blocks`` (not launched). Launch it with ``launch_app`` (adds CSS and queue).

    ``endpoints``: an ``EndpointRegistry`` or a list of ``Endpoint`` (OpenAI-compatible servers, shown as
    ``endpoint:<name>`` models). ``policy``: a ``SharingPolicy`` (default: local use, everything allowed)."""
    if not isinstance(endpoints, EndpointRegistry):
        endpoints = EndpointRegistry(endpoints or ())
    ctx = UIContext(manager=manager, default_model=default_model, default_variant=default_variant,
                    device=device, trusted_models=frozenset(trusted_models), endpoints=endpoints,
                    policy=policy or SharingPolicy.local())
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"## {title}\nChat with small LLMs in different precisions and quantizations, compare "
                    f"them side by side, and see what each costs in speed and memory.", elem_id="app-header")
        with gr.Tabs(elem_id="tabs"):
            for mod in tab_modules():
                mod.build_tab(ctx)
        api.register(ctx)

        def forget_session(request: gr.Request):
            ctx.drop_session(request)

        app.unload(forget_session)
        app.load(None, None, None, js=PHONE_JS, api_visibility=PRIVATE, queue=False)
    app.playground_ctx = ctx  # for tests and for tabs added later
    return app


def launch_app(app: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = 7860,
               auth: list[tuple[str, str]] | None = None, concurrency_limit: int = 2, max_queue: int | None = 64,
               prevent_thread_lock: bool = False, quiet: bool = False, policy=None):
    """Queue + launch with the app's CSS; local only (share links are made by launch.py, with a time limit)."""
    from starlette.middleware import Middleware

    from ..memory import start_heap_trimmer, tune_malloc_for_serving
    from .guard import RequestGuard
    tune_malloc_for_serving()   # before the server's worker threads exist: see its docstring
    start_heap_trimmer()
    policy = policy or getattr(getattr(app, "playground_ctx", None), "policy", None) or SharingPolicy.local()
    app.queue(default_concurrency_limit=concurrency_limit, max_size=max_queue)
    if policy.shared and app.delete_cache is None:
        app.delete_cache = (3600, 3600)   # strangers' uploads and result files: deleted after an hour
    # RequestGuard: NaN/Infinity, lone surrogates, unknown fn_index, absurd nesting get a 4xx, never a 500; in
    # shared mode also: login before any parsing, size limits, failed-login and per-user queue limits
    return app.launch(server_name=host, server_port=port, auth=auth or None, share=False,
                      app_kwargs={"middleware": [Middleware(RequestGuard, blocks=app, policy=policy)]},
                      max_file_size=policy.max_upload_bytes, allowed_paths=[str(p) for p in plugins.served_folders()],
                      prevent_thread_lock=prevent_thread_lock, quiet=quiet, css=APP_CSS + plugins.plugin_css(),
                      theme=THEME, show_error=True, ssr_mode=False,
                      auth_message="LLM quantization playground: sign in with the user name and password "
                                   "the operator gave you.")
