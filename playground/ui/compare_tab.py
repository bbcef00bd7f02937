"""Compare tab: one prompt, 2–4 model × variant slots, each streaming its own reply and stats badge.

Local slots run one after another (the later ones say which slot they wait for): on one device two models
decoding at once only slow each other down, and in sequence each slot's TTFT and tok/s are measured without
interference. Endpoint slots stream at the same time as the local ones and as each other (each on a worker
thread), unless this user may have only one reply at a time (a shared app's --replies-per-user 1). Before
anything runs, the slots' estimated
memory is checked against the manager's budget, so a comparison that cannot fit is refused up front instead of
loading and evicting models in turn.
"""
from __future__ import annotations

import dataclasses
import html
import logging
import queue
import secrets
from dataclasses import dataclass

import gradio as gr

from ..catalog import resolve
from ..endpoints import is_endpoint_name
from ..errors import LoadCancelled, PlaygroundError
from ..manager import check_variant_available
from ..variants import get_variant
from ..progress import LoadTracker
from .common import (PRIVATE, ParamWidgets, UIContext, badge_html, bind, device_busy_note, gb, model_dropdown,
                     params_accordion, params_from, session_id, user_error, variant_dropdown)
from .loading import REPLY_POOL, bar_html, load_in_thread
from .reply import reply_source
from .served import model_choices

log = logging.getLogger(__name__)

MAX_SLOTS = 4
DEFAULT_VARIANTS = ("bf16", "int8", "fp32", "nf4")


def memory_plan(ctx: UIContext, slots: list[tuple[str, str]], request: gr.Request | None = None
                ) -> tuple[list[str], str | None]:
    """Check the slots against the budget. Returns (per-slot lines, refusal message or None).

    Identical model × variant slots share one copy; a slot already loaded counts its measured size.
    """
    lines, problems, sizes, unknown = [], [], {}, []
    for i, (name, variant) in enumerate(slots, 1):
        key = ((name or "").strip(), variant)
        if is_endpoint_name(key[0]):   # served elsewhere: no local memory
            try:
                lines.append(f"slot {i}: {ctx.endpoints_of(request).get(key[0]).label}: "
                             "served remotely (no local memory)")
            except PlaygroundError as exc:
                problems.append(f"slot {i} ({key[0]}): {exc}")
            continue
        if key in sizes:
            lines.append(f"slot {i}: same model as an earlier slot (shared)")
            continue
        try:
            get_variant(variant)
            reason = check_variant_available(variant, ctx.device or ctx.manager.device)
            if reason:
                raise PlaygroundError(reason)
            lm = ctx.find(*key)
            if lm is not None:
                size, how = lm.stats.weights_bytes, "loaded"
            else:
                size, how = ctx.manager.estimate_bytes(resolve(key[0]), variant), "estimated"
        except PlaygroundError as exc:
            problems.append(f"slot {i} ({key[0]} [{variant}]): {exc}")
            continue
        sizes[key] = size
        if size:
            lines.append(f"slot {i}: {key[0]} [{variant}] ≈ {gb(size)} ({how})")
        else:
            unknown.append(i)
            lines.append(f"slot {i}: {key[0]} [{variant}]: size unknown until loaded")
    if problems:
        return lines, "Cannot run this comparison:\n" + "\n".join(f"- {p}" for p in problems)
    total, budget = sum(sizes.values()), ctx.manager.budget_bytes
    if total > budget:
        biggest = sorted(((s, k) for k, s in sizes.items()), reverse=True)
        detail = ", ".join(f"{k[0]} [{k[1]}] ≈ {gb(s)}" for s, k in biggest)
        return lines, (f"These slots need about {gb(total)} together but the memory budget is {gb(budget)} "
                       f"({detail}). Running them would load and unload models in turn; use fewer slots or "
                       f"smaller variants, or start with a larger --memory-budget-gb.")
    return lines, None


def agreement_lines(texts: dict[int, str]) -> list[str]:
    """How each slot's answer compares with slot 1's (or the first that answered): "the same answer" or where it
    first differs, counted in words (the slots' tokenizers may differ)."""
    if len(texts) < 2:
        return []
    first, *rest = sorted(texts)
    base = texts[first].split()
    lines = []
    for slot in rest:
        words = texts[slot].split()
        if words == base:
            lines.append(f"slot {slot}: the same answer as slot {first}")
            continue
        at = next((k for k, (a, b) in enumerate(zip(base, words)) if a != b), min(len(base), len(words)))
        lines.append(f"slot {slot}: differs from slot {first} at word {at + 1}")
    return lines


@dataclass
class CompareUI:
    """The Compare tab's components (``create_ui``), wired by ``wire_events``."""
    tab: gr.Tab
    prompt: gr.Textbox
    system: gr.Textbox
    count: gr.Radio
    run_btn: gr.Button
    stop_btn: gr.Button
    params: ParamWidgets
    status: gr.Markdown
    columns: list[gr.Column]
    models: list[gr.Dropdown]
    variants: list[gr.Dropdown]
    replies: list[gr.Markdown]
    badges: list[gr.Markdown]

    def slot_kwargs(self) -> dict:
        """{"model0": ..., "model3", "variant0", ..., "variant3"}: the slots' widgets as keyword inputs."""
        return {**{f"model{i}": m for i, m in enumerate(self.models)},
                **{f"variant{i}": v for i, v in enumerate(self.variants)}}


# ---- handlers -----------------------------------------------------------------------------------------------------
# gradio injects gr.Request / gr.Progress only into positional parameters; the generation parameters and the slots'
# models and variants (model0..3, variant0..3) arrive as keyword arguments (the event's ``inputs_kwargs``).
def run(ctx: UIContext, text, n, system_prompt, request: gr.Request, progress=gr.Progress(), **values):
    """Yields [reply 1..4, badge 1..4, status]."""
    out_replies, out_badges = [gr.skip()] * MAX_SLOTS, [gr.skip()] * MAX_SLOTS

    def frame(msg):
        return [*out_replies, *out_badges, msg]

    if not (text or "").strip():
        gr.Warning("The prompt is empty: type something to compare.")
        yield frame(gr.skip())
        return
    try:
        n = int(n)
        if not 1 <= n <= MAX_SLOTS:
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise user_error(f"the number of slots must be 1 to {MAX_SLOTS}, got {n!r:.40}") from None
    slots = [(values.get(f"model{i}"), values.get(f"variant{i}")) for i in range(n)]
    try:
        gen_params = params_from(values)
    except PlaygroundError as exc:
        raise user_error(str(exc)) from None
    if not gen_params.greedy and gen_params.seed is None:   # sampling: one seed, the same in every slot
        gen_params = dataclasses.replace(gen_params, seed=secrets.randbelow(2 ** 31))
    lines, refusal = memory_plan(ctx, slots, request)
    if refusal:
        gr.Warning(refusal.splitlines()[0])
        yield frame("✗ Refused: " + html.escape(refusal).replace("\n", "  \n"))
        return
    plan = "  \n".join(lines + [note for note in [device_busy_note()] if note])
    for i in range(MAX_SLOTS):
        out_replies[i], out_badges[i] = ("*waiting…*" if i < n else "", "")
    yield frame(plan)
    sid = session_id(request)
    cancel = ctx.cancels.start(sid, "compare")
    msgs = [{"role": "user", "content": text}]
    failed, answers = [], [None] * n
    lanes = slot_lanes(ctx, slots)
    for lane in lanes:           # a slot that runs after another says which one it waits for
        for before, after in zip(lane, lane[1:]):
            out_replies[after] = f"*waiting for slot {before + 1}…*"
    box: queue.Queue = queue.Queue()
    for lane in lanes:          # on the reply pool (warm OpenMP teams: see ui/loading.py)
        REPLY_POOL.submit(_run_lane, ctx, lane, slots, request, msgs, system_prompt, gen_params, cancel, box.put)
    order = lanes_line(lanes)
    plan += f"  \n{order}" if order else ""        # kept to the end: how the slots ran beside their numbers
    yield frame(plan)
    loading, generating, lanes_left, finished = {}, set(), len(lanes), False
    try:
        while lanes_left:
            try:
                kind, i, value = box.get(timeout=0.5)
            except queue.Empty:
                continue
            if kind == "lane done":
                lanes_left -= 1
                continue
            if kind == "start":
                for lane in lanes:
                    if i in lane:
                        for later in lane[lane.index(i) + 1:]:
                            out_replies[later] = f"*waiting for slot {i + 1}…*"
                continue
            if kind == "load":
                loading[i] = value
                out_replies[i] = bar_html(value, "load-bar compare-load-bar")
            elif kind == "generating":
                loading.pop(i, None)
                generating.add(i)
                out_replies[i] = "…"
            elif kind == "text":
                out_replies[i] = value or "…"
            elif kind == "done":
                generating.discard(i)
                out_replies[i] = value.text or "*(empty reply)*"
                out_badges[i], answers[i] = badge_html(value.stats), value.text
            elif kind in ("error", "cancelled", "skipped"):
                loading.pop(i, None)
                generating.discard(i)
                out_replies[i] = ("*skipped (stopped)*" if kind == "skipped" else
                                  f"■ {html.escape(value)}" if kind == "cancelled" else
                                  f"⚠ Error: {html.escape(value)}")
                out_badges[i] = ""
                if kind == "error":
                    failed.append(i + 1)
            now = [f"slot {j + 1}: {html.escape(snap.line())}" for j, snap in sorted(loading.items())]
            if generating:
                now.append("▶ generating: " + ", ".join(f"slot {j + 1}" for j in sorted(generating)))
            yield frame(plan + ("  \n" + "  \n".join(now) if now else ""))
        finished = True
    finally:
        if not finished:          # the page went away: the lanes stop at their next step
            cancel.set()
        ctx.cancels.finish(sid, "compare", cancel)
    failed.sort()
    end = "■ stopped" if cancel.is_set() else "✓ done"
    if failed:
        end += f" (slot {', '.join(map(str, failed))} failed: see the message in the slot)"
    texts = {i + 1: t for i, t in enumerate(answers) if t is not None}
    how = "greedy" if gen_params.greedy else f"sampled with seed {gen_params.seed} in every slot"
    lines = agreement_lines(texts)
    yield frame(plan + "  \n" + end + (f"  \n**Answers** ({how}): " + "; ".join(lines) if lines else ""))


def slot_lanes(ctx: UIContext, slots: list[tuple[str, str]]) -> list[list[int]]:
    """Which slots run at the same time: the local models one after another (they share the device, and each
    one's speed is measured undisturbed), each endpoint beside them. When this user may have only one reply at a
    time (a shared app's --replies-per-user), all of them one after another."""
    remote = [i for i, (name, _) in enumerate(slots) if is_endpoint_name((name or "").strip())]
    local = [i for i in range(len(slots)) if i not in remote]
    lanes = ([local] if local else []) + [[i] for i in remote]
    limit = ctx.policy.replies_per_user
    if limit is not None and len(lanes) > limit:
        return [list(range(len(slots)))]
    return lanes


def lanes_line(lanes: list[list[int]]) -> str:
    def names(lane):
        return " → ".join(f"slot {i + 1}" for i in lane)
    if len(lanes) == 1:
        return f"◔ one after another: {names(lanes[0])}" if len(lanes[0]) > 1 else ""
    return "◔ at the same time: " + " | ".join(names(lane) for lane in lanes)


def _run_lane(ctx, lane, slots, request, msgs, system_prompt, gen_params, cancel, post) -> None:
    """One lane's slots, in order, on a worker thread; everything is posted to the handler as (kind, slot, value)."""
    try:
        for i in lane:
            post(("start", i, None))
            _run_slot(ctx, i, *slots[i], request, msgs, system_prompt, gen_params, cancel, post)
    finally:
        post(("lane done", -1, None))


def _run_slot(ctx, i, name, variant, request, msgs, system_prompt, gen_params, cancel, post) -> None:
    if cancel.is_set():
        post(("skipped", i, None))
        return
    try:
        source = reply_source(ctx, name, variant, request)
        if source.needs_load:      # a bar in the slot: stage, steps, elapsed, estimate; Stop cancels it
            tracker = LoadTracker(f"{name} [{variant}]", cancel)
            for snap in load_in_thread(lambda: source.load(tracker), tracker):
                post(("load", i, snap))
        events = source.stream(msgs, system_prompt, gen_params, cancel)
        post(("generating", i, None))
        for event in events:
            post(("done", i, event) if event.done else ("text", i, event.text))
    except LoadCancelled as exc:
        post(("cancelled", i, str(exc)))
    except PlaygroundError as exc:
        post(("error", i, str(exc)))
    except Exception as exc:  # unexpected: one line in the slot, traceback in the log
        log.exception("compare slot %d failed", i + 1)
        post(("error", i, f"unexpected ({type(exc).__name__}): {exc}"))


def stop(ctx: UIContext, request: gr.Request):
    ctx.cancels.stop(session_id(request), "compare")


def refresh_models(ctx: UIContext, model0, model1, model2, model3, request: gr.Request):
    """Endpoints added in the Models tab join the slots' model lists when the tab is opened again."""
    return [gr.Dropdown(choices=model_choices(ctx, m, request)) for m in (model0, model1, model2, model3)]


def show_slots(n):
    return [gr.Column(visible=i < int(n)) for i in range(MAX_SLOTS)]


# ---- layout and wiring --------------------------------------------------------------------------------------------
def create_ui(ctx: UIContext) -> CompareUI:
    with gr.Tab("Compare", id="compare", elem_id="tab-compare") as tab:
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=400):
                prompt = gr.Textbox(label="Prompt (sent to every slot)", lines=1, max_lines=8, elem_id="compare-prompt",
                                    placeholder="e.g. What is the capital of France? (Enter runs, Shift+Enter adds "
                                                "a line)")
                system = gr.Textbox(value="You are a helpful assistant.", label="System prompt", lines=1,
                                    elem_id="compare-system")
            with gr.Column(scale=2, min_width=280):
                count = gr.Radio([2, 3, 4], value=2, label="Slots", elem_id="compare-count")
                with gr.Row(equal_height=False):
                    run_btn = gr.Button("Run all", variant="primary", scale=2, min_width=90, elem_id="compare-run")
                    stop_btn = gr.Button("Stop", variant="stop", scale=1, min_width=70, elem_id="compare-stop")
                params = params_accordion(
                    "compare", max_new_tokens=64, greedy=True,
                    greedy_info="on by default: the slots then differ only by model and variant; untick to sample "
                                "(every slot gets the same seed)")
        status = gr.Markdown("", elem_id="compare-status", elem_classes=["status-line"])
        columns, models, variants, replies, badges = [], [], [], [], []
        with gr.Row(equal_height=False):
            for i in range(MAX_SLOTS):
                with gr.Column(visible=i < 2, min_width=240, elem_id=f"compare-slot-{i}",
                               elem_classes=["compare-slot"]) as col:
                    gr.Markdown(f"**Slot {i + 1}**")
                    models.append(model_dropdown(ctx, label="Model", info=None, elem_id=f"compare-model-{i}"))
                    variants.append(variant_dropdown(DEFAULT_VARIANTS[i], elem_id=f"compare-variant-{i}"))
                    replies.append(gr.Markdown("", elem_id=f"compare-reply-{i}", elem_classes=["compare-reply"],
                                               min_height=120))
                    badges.append(gr.Markdown("", elem_id=f"compare-badge-{i}"))
                columns.append(col)
    return CompareUI(tab, prompt, system, count, run_btn, stop_btn, params, status, columns, models, variants,
                     replies, badges)


def wire_events(ctx: UIContext, ui: CompareUI) -> None:
    ui.tab.select(bind(refresh_models, ctx), ui.models, ui.models, queue=False, api_visibility=PRIVATE)
    ui.count.change(show_slots, [ui.count], ui.columns, queue=False, api_visibility=PRIVATE)
    # on the wire (what the page sends): prompt, count, system, the 8 parameters, model0..3, variant0..3
    run_args = dict(fn=bind(run, ctx), inputs=[ui.prompt, ui.count, ui.system],
                    inputs_kwargs={**ui.params.as_kwargs(), **ui.slot_kwargs()},
                    outputs=[*ui.replies, *ui.badges, ui.status], api_visibility=PRIVATE,
                    show_progress="minimal", show_progress_on=[ui.status])
    ui.run_btn.click(**run_args)
    ui.prompt.submit(**run_args)
    ui.stop_btn.click(bind(stop, ctx), None, None, queue=False, api_visibility=PRIVATE)


def build_tab(ctx: UIContext) -> CompareUI:
    ui = create_ui(ctx)
    wire_events(ctx, ui)
    return ui
