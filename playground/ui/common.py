"""Pieces shared by the tabs: the UI context, stop signals per session, parameter widgets, badges, loading."""
from __future__ import annotations

import functools
import html
import inspect
import math
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import gradio as gr

from ..catalog import CATALOG
from ..engine import KV_CACHE_OPTIONS, GenerationParams, ReplyStats
from ..endpoints import EndpointRegistry
from ..errors import InvalidParameterError
from ..manager import GB, LoadedModel, ModelManager
from ..placement import split_text
from ..progress import LoadTracker
from ..sharing import SharingPolicy
from ..variants import VARIANTS

PRIVATE = "private"  # api_visibility of UI-only events: hidden from the API page and from gradio_client


class CancelRegistry:
    """One stop signal per (browser session, scope): Stop sets the signal of the reply running in that session.

    The engine checks the event before every token, so a stopped reply ends cleanly with its stats
    (finish_reason "stopped") and the model stays usable.
    """

    def __init__(self):
        # (session, scope) -> (the stop signal, what runs: "reply" or "load")
        self._running: dict[tuple[str, str], tuple[threading.Event, str]] = {}
        self._lock = threading.Lock()

    def start(self, session: str | None, scope: str, kind: str = "reply") -> threading.Event:
        """``kind``: what runs ("reply" or "load"), for the words of a click refused meanwhile (``running_kind``)."""
        event = threading.Event()
        with self._lock:
            self._running[(session or "", scope)] = (event, kind)
        return event

    def finish(self, session: str | None, scope: str, event: threading.Event) -> None:
        """The reply (or load) that ``start`` gave ``event`` to has ended: ``running`` is False again."""
        with self._lock:
            entry = self._running.get((session or "", scope))
            if entry is not None and entry[0] is event:
                del self._running[(session or "", scope)]

    def running(self, session: str | None, scope: str) -> bool:
        """A reply (or load) started in this session and scope has not finished yet."""
        return self.running_kind(session, scope) is not None

    def running_kind(self, session: str | None, scope: str) -> str | None:
        """What ``start`` said runs in this session and scope ("reply", "load"), or None when nothing does."""
        with self._lock:
            entry = self._running.get((session or "", scope))
        return None if entry is None else entry[1]

    def stop(self, session: str | None, scope: str) -> bool:
        with self._lock:
            entry = self._running.get((session or "", scope))
        if entry is None:
            return False
        entry[0].set()
        return True

    def drop_session(self, session: str | None) -> None:
        with self._lock:
            for key in [k for k in self._running if k[0] == (session or "")]:
                del self._running[key]


@dataclass
class UIContext:
    """What every tab builder receives (``build_tab(ctx)``)."""
    manager: ModelManager
    default_model: str
    default_variant: str = "bf16"
    device: str | None = None                 # None: the manager's device
    trusted_models: frozenset[str] = frozenset()  # models allowed to run their own code (--trust-remote-code)
    cancels: CancelRegistry = field(default_factory=CancelRegistry)
    endpoints: EndpointRegistry = field(default_factory=EndpointRegistry)  # served models given at launch
    # endpoints added in the Models tab, per browser session (session hash → its registry; parent: ``endpoints``)
    session_endpoints: dict[str, EndpointRegistry] = field(default_factory=dict)
    _endpoints_lock: threading.Lock = field(default_factory=threading.Lock)
    policy: SharingPolicy = field(default_factory=SharingPolicy.local)   # local use, or shared with strangers
    # local models with a reply generating: (name, variant) → how many (shared mode does not unload them)
    replying: Counter = field(default_factory=Counter)
    _replying_lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        if self.policy.shared:     # strangers: loading one user's model never evicts one another is replying with
            self.manager.busy = lambda lm: self.is_replying(lm.name, lm.variant)

    @contextmanager
    def replying_with(self, name: str, variant: str):
        with self._replying_lock:
            self.replying[(name, variant)] += 1
        try:
            yield
        finally:
            with self._replying_lock:
                self.replying[(name, variant)] -= 1
                if self.replying[(name, variant)] <= 0:
                    del self.replying[(name, variant)]

    def is_replying(self, name: str, variant: str) -> bool:
        with self._replying_lock:
            return self.replying.get((name, variant), 0) > 0

    def unload_idle(self, name: str | None = None, variant: str | None = None) -> tuple[list[str], list[str]]:
        """Unload ``name`` × ``variant`` (None: every model); in shared mode a model generating a reply for
        someone is kept. Returns (unloaded labels, kept labels)."""
        if name is None and not self.policy.shared:      # local use: everything, as always
            done = [lm.label for lm in self.manager.loaded()]
            self.manager.unload_all()
            return done, []
        done, kept = [], []
        for lm in self.manager.loaded():
            if name is not None and (lm.name, lm.variant) != (name, variant):
                continue
            if self.policy.shared and self.is_replying(lm.name, lm.variant):
                kept.append(lm.label)
            elif self.manager.unload(lm.name, lm.variant, lm.device):
                done.append(lm.label)
        return done, kept

    def endpoints_of(self, request: gr.Request | None, create: bool = False) -> EndpointRegistry:
        """The endpoints one session sees: the launch-time ones plus the ones it added itself (``create``: make
        the session's own registry, to add to it)."""
        sid = session_id(request)
        with self._endpoints_lock:
            reg = self.session_endpoints.get(sid)
            if reg is None and create:
                reg = self.session_endpoints[sid] = EndpointRegistry(parent=self.endpoints)
        return reg if reg is not None else self.endpoints   # an empty registry is falsy (__len__)

    def drop_session(self, request: gr.Request | None) -> None:
        """A browser tab closed: forget its stop signals and the endpoints (and API keys) it added."""
        self.cancels.drop_session(session_id(request))
        with self._endpoints_lock:
            self.session_endpoints.pop(session_id(request), None)

    def load(self, name: str, variant: str, progress=None) -> LoadedModel:
        """Load (or fetch from the manager's cache). ``progress``: a ``LoadTracker`` (the load bars; Cancel), or a
        gr.Progress fed by the manager's callback."""
        name, variant = self.policy.model_name(_text_arg("model", name)), _text_arg("variant", variant)

        def cb(fraction: float, message: str) -> None:
            if progress is not None:
                progress(max(0.0, min(1.0, fraction)), desc=message)
        return self.manager.get(name, variant, device=self.device, trust_remote_code=name in self.trusted_models,
                                progress=progress if isinstance(progress, LoadTracker) else cb)

    def find(self, name: str, variant: str) -> LoadedModel | None:
        return self.manager.find(self.policy.model_name(_text_arg("model", name)), _text_arg("variant", variant),
                                 self.device)


def _text_arg(what: str, value) -> str:
    """A model or variant name from a widget or the API: text (None is empty), else a clear error."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidParameterError(f"{what} must be a name (text), got {type(value).__name__} {value!r:.80}")
    return value.strip()


def user_error(message: str) -> gr.Error:
    """An error toast for the user. No traceback on the console: the message says it all (unexpected errors
    are logged with their traceback by the caller)."""
    return gr.Error(message, print_exception=False)


def session_id(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or ""


def user_id(request: gr.Request | None) -> str:
    """Who a request is from, for per-user limits: the login name, else the browser session."""
    name = getattr(request, "username", None)
    return f"user:{name}" if name else f"session:{session_id(request)}"


# ---- widgets ---------------------------------------------------------------------------------------------------
def model_dropdown(ctx: UIContext, value: str | None = None, label: str = "Model", **kw) -> gr.Dropdown:
    choices = list(CATALOG) + [m for m in ctx.policy.offered_models() if m not in CATALOG] + ctx.endpoints.choices()
    value = value or ctx.default_model
    if value not in choices:
        choices.append(value)
    return gr.Dropdown(choices=choices, value=value, label=label, allow_custom_value=True,
                       info=kw.pop("info", "catalog key, Hugging Face id or local folder"), **kw)


def variant_dropdown(value: str = "bf16", label: str = "Variant", **kw) -> gr.Dropdown:
    return gr.Dropdown(choices=list(VARIANTS), value=value, label=label, **kw)


@dataclass
class ParamWidgets:
    max_new_tokens: gr.Slider
    temperature: gr.Slider
    top_p: gr.Slider
    top_k: gr.Slider
    repetition_penalty: gr.Slider
    seed: gr.Number
    greedy: gr.Checkbox
    kv_cache: gr.Dropdown

    def as_kwargs(self) -> dict[str, gr.components.Component]:
        """{parameter name: widget}, for an event's ``inputs_kwargs``: the handler gets the values as
        ``**params`` (in this order on the wire, after the event's positional inputs) and builds them with
        ``params_from``."""
        return {name: getattr(self, name) for name in PARAM_NAMES}


PARAM_NAMES = tuple(f.name for f in fields(ParamWidgets))   # the GenerationParams the widgets set, in wire order


def params_accordion(prefix: str, max_new_tokens: int = 256, open: bool = False, greedy: bool = False,
                     greedy_info: str | None = None) -> ParamWidgets:
    """The generation-parameter widgets, in an accordion; ``prefix`` makes their elem_ids unique per tab."""
    with gr.Accordion("Generation parameters", open=open, elem_id=f"{prefix}-params"):
        w = ParamWidgets(
            max_new_tokens=gr.Slider(1, 2048, value=max_new_tokens, step=1, label="Max new tokens",
                                     elem_id=f"{prefix}-max-new-tokens"),
            temperature=gr.Slider(0.0, 2.0, value=0.7, step=0.05, label="Temperature",
                                  elem_id=f"{prefix}-temperature"),
            top_p=gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p", elem_id=f"{prefix}-top-p"),
            top_k=gr.Slider(0, 200, value=50, step=1, label="Top-k (0 = off)", elem_id=f"{prefix}-top-k"),
            repetition_penalty=gr.Slider(0.5, 2.0, value=1.0, step=0.05, label="Repetition penalty",
                                         elem_id=f"{prefix}-repetition-penalty"),
            seed=gr.Number(value=-1, precision=0, minimum=-1, label="Seed (-1 = random)",
                           elem_id=f"{prefix}-seed"),
            greedy=gr.Checkbox(value=greedy, label="Greedy (deterministic, ignores sampling settings)",
                               info=greedy_info, elem_id=f"{prefix}-greedy"),
            kv_cache=gr.Dropdown(choices=list(KV_CACHE_OPTIONS), value="default", label="KV cache",
                                 info="int8/int4/int2: keys and values stored quantized (less memory for long "
                                      "chats; decodes eagerly; not for sliding-window models such as Gemma 3)",
                                 elem_id=f"{prefix}-kv-cache"),
        )
    return w


def _as_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    number = _as_float(name, value, "an integer")
    if number != int(number):
        raise InvalidParameterError(f"{name} must be an integer, got {value!r:.80}")
    return int(number)


def _as_float(name: str, value, kind: str = "a number") -> float:
    """A finite float; NaN, infinities, huge ints and non-numbers are a clear error (never a crash later)."""
    if isinstance(value, bool):
        raise InvalidParameterError(f"{name} must be {kind}, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InvalidParameterError(f"{name} must be {kind}, got {value!r:.80}") from None
    if not math.isfinite(number):
        raise InvalidParameterError(f"{name} must be {kind} (finite), got {value!r:.80}")
    return number


def _as_bool(name: str, value) -> bool:
    if value is None or isinstance(value, bool) or value in (0, 1):
        return bool(value)
    raise InvalidParameterError(f"{name} must be true or false, got {value!r:.80}")


def params_from(values: Mapping) -> GenerationParams:
    """Widget or API values ({name: value}, names of ``PARAM_NAMES``; other keys are ignored) → validated
    GenerationParams (raises InvalidParameterError with a clear message). The one place they are built."""
    missing = [n for n in PARAM_NAMES if n not in values and n != "kv_cache"]
    if missing:
        raise InvalidParameterError(f"missing generation parameter(s): {', '.join(missing)}")
    seed = values["seed"]
    seed = None if seed is None or str(seed).strip() == "" else _as_int("seed", seed)
    if seed is not None and seed < 0:
        seed = None  # -1 (the widget's default): a fresh random seed per reply
    return GenerationParams(max_new_tokens=_as_int("max_new_tokens", values["max_new_tokens"]),
                            temperature=_as_float("temperature", values["temperature"]),
                            top_p=_as_float("top_p", values["top_p"]), top_k=_as_int("top_k", values["top_k"]),
                            repetition_penalty=_as_float("repetition_penalty", values["repetition_penalty"]),
                            seed=seed, greedy=_as_bool("greedy", values["greedy"]),
                            kv_cache=_text_arg("kv_cache", values.get("kv_cache")) or "default")


def make_params(*values) -> GenerationParams:
    """``params_from`` for values in ``PARAM_NAMES`` order (kv_cache optional)."""
    return params_from(dict(zip(PARAM_NAMES, values)))


def bind(fn: Callable, ctx: UIContext) -> Callable:
    """A module-level handler ``fn(ctx, ...)`` as the event handler ``handler(...)`` that Gradio calls.

    Not ``functools.partial``: Gradio finds ``gr.Request`` / ``gr.Progress`` parameters by the handler's
    signature and type hints, which a partial hides. The handler keeps ``fn``'s name (the event's api_name)."""
    signature = inspect.signature(fn)
    first = next(iter(signature.parameters))
    if inspect.isgeneratorfunction(fn):
        def handler(*args, **kwargs):
            yield from fn(ctx, *args, **kwargs)
    else:
        def handler(*args, **kwargs):
            return fn(ctx, *args, **kwargs)
    functools.update_wrapper(handler, fn)
    handler.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    handler.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != first}
    return handler


# ---- text -------------------------------------------------------------------------------------------------------
def device_busy_note() -> str:
    """A line for the Chat/Compare status while a benchmark sweep runs (it shares the device); else "".

    The sweep says so through ``playground.device_use`` (the UI does not import ``benchmarks``)."""
    from ..device_use import device_sharers
    return "  \n".join(f"◔ A {what} is running on this machine: replies share the device with it (slower), and "
                       f"chatting disturbs the {what}'s timings." for what in device_sharers())


def badge_text(stats: ReplyStats, continue_hint: bool = False) -> str:
    text = stats.badge()
    if stats.finish_reason == "stopped":
        text += " · stopped"
    elif stats.finish_reason == "length":
        text += f" · cut at the {stats.new_tokens}-token limit" + (": press Continue" if continue_hint else "")
    return text


def badge_html(stats: ReplyStats | None = None, text: str | None = None) -> str:
    """The stats line under a reply; the ``reply-badge`` class is what the CSS styles and the tests look for."""
    text = text if text is not None else badge_text(stats) if stats else ""
    return f'<span class="reply-badge">{html.escape(text)}</span>' if text else ""


def gb(n: int | float) -> str:
    return f"{n / GB:.2f} GB"


def describe_loaded(lm: LoadedModel) -> str:
    s = lm.stats
    weights = f"weights {gb(s.weights_bytes)}"
    if len(s.weights_by_device) > 1:          # device_map over several devices: where each part went
        weights += f" ({split_text(s.weights_by_device)})"
    parts = [f"**{html.escape(lm.label)}** on {lm.device}", weights, f"load {s.load_s:.1f} s"]
    if s.quantize_s:
        parts.append(f"quantize {s.quantize_s:.1f} s")
    if lm.kernel:
        parts.append(f"kernel {lm.kernel}")
    if not lm.has_chat_template:
        parts.append("no chat template: completion mode")
    line = "✓ Loaded: " + " · ".join(parts)
    if s.notes:
        line += "  \n" + "  \n".join(f"ℹ {html.escape(n)}" for n in s.notes)
    return line
