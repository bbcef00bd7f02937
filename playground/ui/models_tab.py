"""Models tab: what is loaded, how big, how long it took; unload to give memory back."""
from __future__ import annotations

import gradio as gr

from ..manager import GB
from .common import PRIVATE, UIContext, bind, gb
from .served import build_panel as build_endpoints_panel

COLUMNS = ["model", "variant", "device", "weights GB", "load s", "quantize s", "convert s", "kernel", "notes"]
# in pixels, not shares: on a phone the table scrolls sideways instead of squeezing words into letter stacks
WIDTHS = ["210px", "80px", "64px", "96px", "70px", "96px", "90px", "130px", "320px"]


def table(ctx: UIContext) -> list[list]:
    rows = []
    for lm in ctx.manager.loaded():
        s = lm.stats
        rows.append([lm.name, lm.variant, lm.device, round(s.weights_bytes / GB, 3), round(s.load_s, 2),
                     round(s.quantize_s, 2), round(s.convert_s, 2), lm.kernel or "—", "; ".join(s.notes)])
    return rows


def memory_line(ctx: UIContext) -> str:
    m = ctx.manager
    used, budget = m.used_bytes(), m.budget_bytes
    pct = 100 * used / budget if budget else 0
    return (f"**Memory budget** {gb(budget)} · **used by loaded weights** {gb(used)} ({pct:.0f} %) · "
            f"**device** {ctx.device or m.device} · {len(m.loaded())} model(s) loaded. Loading beyond the "
            f"budget unloads the least recently used model first.")


def unreturned_lines(ctx: UIContext) -> str:
    """Unloads whose memory did not come back: what remains and what holds it (``ModelManager.unreturned``)."""
    held = [u for u in ctx.manager.unreturned if u.still_held]
    if not held:
        return ""
    return "\n".join(["**Warning: memory not returned.** These models were unloaded, but something still holds "
                      "them, so their memory stays in use until the app restarts:"] +
                     [f"- {u.label}: {gb(u.bytes)} held by {u.held_by}" for u in held])


def _kept_note(kept: list[str]) -> str:
    return (f"kept {', '.join(kept)}: generating a reply for another user right now (try again when it is "
            f"done)")


def labels(ctx: UIContext) -> list[str]:
    return [f"{lm.name} [{lm.variant}]" for lm in ctx.manager.loaded()]


# ---- handlers (``bind(fn, ctx)`` makes the event handler) ------------------------------------------------------------
def refresh(ctx: UIContext, note: str = ""):
    """(memory line, table, unload choice, message, unreturned memory): what the tab shows now."""
    names = labels(ctx)
    return (memory_line(ctx), table(ctx), gr.Dropdown(choices=names, value=names[0] if names else None),
            note, unreturned_lines(ctx))


def unload(ctx: UIContext, label):
    """The Unload button: unload the chosen model unless it is generating for someone."""
    for lm in ctx.manager.loaded():
        if f"{lm.name} [{lm.variant}]" == label:
            done, kept = ctx.unload_idle(lm.name, lm.variant)
            return refresh(ctx, f"⏏ unloaded {label}" if done else _kept_note(kept))
    if not label:
        gr.Warning("Choose a loaded model to unload.")
    return refresh(ctx, f"{label} is not loaded" if label else "")


def unload_all(ctx: UIContext):
    """The Unload all button: every model not generating right now."""
    done, kept = ctx.unload_idle()
    return refresh(ctx, f"⏏ unloaded {len(done)} model(s)" + (f"; {_kept_note(kept)}" if kept else ""))


def build_tab(ctx: UIContext) -> None:
    with gr.Tab("Models", id="models", elem_id="tab-models") as tab:
        memory = gr.Markdown(memory_line(ctx), elem_id="models-memory")
        leaks = gr.Markdown(unreturned_lines(ctx), elem_id="models-unreturned")
        loaded = gr.Dataframe(value=table(ctx), headers=COLUMNS, interactive=False, wrap=True,
                              column_widths=WIDTHS,
                              elem_id="models-table", label="Loaded models")
        with gr.Row(equal_height=False):
            choice = gr.Dropdown(choices=labels(ctx), value=None, label="Model to unload", scale=3,
                                 elem_id="models-choice")
            unload_btn = gr.Button("Unload", variant="stop", scale=1, min_width=100, elem_id="models-unload")
            unload_all_btn = gr.Button("Unload all", scale=1, min_width=100, elem_id="models-unload-all")
            refresh_btn = gr.Button("Refresh", scale=1, min_width=100, elem_id="models-refresh")
        message = gr.Markdown("", elem_id="models-message")
        build_endpoints_panel(ctx)

        outs = [memory, loaded, choice, message, leaks]
        show = bind(refresh, ctx)
        refresh_btn.click(show, None, outs, api_visibility=PRIVATE, queue=False)
        tab.select(show, None, outs, api_visibility=PRIVATE, queue=False)
        unload_btn.click(bind(unload, ctx), [choice], outs, api_visibility=PRIVATE)
        unload_all_btn.click(bind(unload_all, ctx), None, outs, api_visibility=PRIVATE)
