"""A benchmark result row, typed: who was measured (model, variant, device, lengths, status) and one section per
kind of measurement (load, latency, memory, roofline, quality, serving), each validated when it is built or set.

The files, reports, the UI and the worker's events keep the flat row they always had: ``ResultRow.to_dict()``
gives exactly ``results.COLUMNS`` in order, then ``raw`` (per-repeat lists, JSON only); ``ResultRow.from_dict``
reads such a row back (columns an older file lacks stay None). ``set(**columns)`` takes flat column names, so the
code that measures does not need to know which section a column lives in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace

from .results import COLUMNS, KEY, RAW, STATUSES


class RowError(ValueError):
    """A result row got a value it cannot hold; the message names the column and the value."""


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_number(name: str, v, lo: float | None = 0.0) -> None:
    """None, or a number (int/float, not bool) at least ``lo`` (NaN/inf pass: the writer turns them into empty)."""
    if v is None:
        return
    if not _is_number(v):
        raise RowError(f"{name} must be a number or None, got {v!r} ({type(v).__name__})")
    if lo is not None and math.isfinite(v) and v < lo:
        raise RowError(f"{name} must be at least {lo:g}, got {v!r}")


def _check_int(name: str, v, lo: int, optional: bool = True) -> None:
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise RowError(f"{name} must be an integer of at least {lo}{' or None' if optional else ''}, got {v!r}")


def _check_text(name: str, v, optional: bool = True) -> None:
    if v is None and optional:
        return
    if not isinstance(v, str):
        raise RowError(f"{name} must be text{' or None' if optional else ''}, got {v!r} ({type(v).__name__})")


class _Section:
    """Numbers are non-negative unless listed in ``SIGNED``; text columns are listed in ``TEXT``."""
    TEXT: tuple[str, ...] = ()
    SIGNED: tuple[str, ...] = ()

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in self.TEXT:
                _check_text(f.name, v)
            else:
                _check_number(f.name, v, None if f.name in self.SIGNED else 0.0)


@dataclass
class Load(_Section):
    """Loading the (model, variant): seconds, peak memory while loading, the weights, the kernel used; the fast
    decoder's warm-up (compiling the decode step), which load_s leaves out."""
    TEXT = ("kernel",)
    kernel: str | None = None
    load_s: float | None = None
    load_read_s: float | None = None
    load_quantize_s: float | None = None
    convert_s: float | None = None
    load_peak_mem_gb: float | None = None
    weights_gb: float | None = None
    warmup_s: float | None = None


@dataclass
class Latency(_Section):
    """Time to first token, decode speed, inter-token latency, end-to-end; the yardstick (``generate``) and the
    harness overhead against it (negative when the harness was the faster one)."""
    SIGNED = ("harness_overhead",)
    ttft_ms: float | None = None
    ttft_ms_p90: float | None = None
    decode_tok_s: float | None = None
    decode_tok_s_p90: float | None = None
    itl_p50_ms: float | None = None
    itl_p90_ms: float | None = None
    e2e_s: float | None = None
    e2e_short_s: float | None = None
    e2e_long_s: float | None = None
    generate_e2e_s: float | None = None
    harness_overhead: float | None = None


@dataclass
class Memory(_Section):
    """Peaks while generating (allocator, reserved, nvidia-smi, process RSS) and the KV cache's size."""
    TEXT = ("nvml_scope",)
    peak_gpu_mem_gb: float | None = None
    peak_gpu_reserved_gb: float | None = None
    peak_gpu_nvml_gb: float | None = None
    nvml_scope: str | None = None
    peak_rss_gb: float | None = None
    kv_cache_gb: float | None = None


@dataclass
class Roofline(_Section):
    """The memory-bandwidth roofline: measured read bandwidth, bytes read per decode step, the tok/s they allow; and
    the other yardstick, ``x_transformers``: decode tok/s over the transformers peer row's (``results.add_peer_ratios``,
    set when the run's rows are written)."""
    read_bandwidth_gb_s: float | None = None
    decode_bytes_gb: float | None = None
    roofline_tok_s: float | None = None
    roofline_fraction: float | None = None
    x_transformers: float | None = None


@dataclass
class Quality(_Section):
    """One value per (model, variant), repeated in each of its rows (``results.QUALITY_COLUMNS``)."""
    TEXT = ("quality_error",)
    perplexity: float | None = None
    perplexity_zh: float | None = None
    accuracy: float | None = None
    quality_tokens: int | None = None
    quality_items: int | None = None
    quality_s: float | None = None
    quality_error: str | None = None

    def __post_init__(self):
        super().__post_init__()
        _check_int("quality_tokens", self.quality_tokens, 0)
        _check_int("quality_items", self.quality_items, 0)
        if self.accuracy is not None and math.isfinite(self.accuracy) and self.accuracy > 1:
            raise RowError(f"accuracy is a fraction in [0, 1], got {self.accuracy!r}")


@dataclass
class Serving(_Section):
    """A serving level against an endpoint (``results.SERVING_COLUMNS``; empty elsewhere)."""
    TEXT = ("token_count",)
    concurrency: int | None = None
    request_rate: float | None = None       # None: back to back (inf)
    requests: int | None = None
    errors: int | None = None
    duration_s: float | None = None
    req_s: float | None = None
    tok_s: float | None = None
    ttft_ms_p99: float | None = None
    itl_p99_ms: float | None = None
    e2e_p50_s: float | None = None
    e2e_p90_s: float | None = None
    e2e_p99_s: float | None = None
    prompt_tokens_measured: float | None = None
    output_tokens_mean: float | None = None
    token_count: str | None = None

    def __post_init__(self):
        super().__post_init__()
        _check_int("concurrency", self.concurrency, 1)
        _check_int("requests", self.requests, 0)
        _check_int("errors", self.errors, 0)
        if self.requests is not None and self.errors is not None and self.errors > self.requests:
            raise RowError(f"errors ({self.errors}) cannot exceed requests ({self.requests})")
        if self.request_rate is not None and not self.request_rate > 0:
            raise RowError(f"request_rate must be positive (None: back to back), got {self.request_rate!r}")


SECTIONS = {"load": Load, "latency": Latency, "memory": Memory, "roofline": Roofline, "quality": Quality,
            "serving": Serving}
_IDENTITY = ("model", "variant", "device", "batch_size", "prompt_tokens", "new_tokens", "status", "error",
             "random_weights", "decode_mode", "kv_cache", "repeats", "timed_with")
SECTION_OF = {f.name: name for name, cls in SECTIONS.items() for f in fields(cls)}   # column -> section


@dataclass
class ResultRow:
    """One measured (or failed) combination: identity and status here, the measurements in their sections."""
    model: str
    variant: str
    device: str
    batch_size: int              # the serving scenario puts its concurrency here
    prompt_tokens: int
    new_tokens: int
    status: str = "ok"
    error: str = ""
    random_weights: bool | None = None
    decode_mode: str | None = None
    kv_cache: str | None = None
    repeats: int | None = None
    timed_with: str | None = None
    load: Load = field(default_factory=Load)
    latency: Latency = field(default_factory=Latency)
    memory: Memory = field(default_factory=Memory)
    roofline: Roofline = field(default_factory=Roofline)
    quality: Quality = field(default_factory=Quality)
    serving: Serving = field(default_factory=Serving)
    raw: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("model", "variant", "device"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise RowError(f"{name} must be a non-empty text, got {v!r}")
        for name in ("batch_size", "prompt_tokens", "new_tokens"):
            _check_int(name, getattr(self, name), 1, optional=False)
        if self.status not in STATUSES:
            raise RowError(f"status must be one of {', '.join(STATUSES)}, got {self.status!r}")
        _check_text("error", self.error, optional=False)
        if self.random_weights is not None and not isinstance(self.random_weights, bool):
            raise RowError(f"random_weights must be True, False or None, got {self.random_weights!r}")
        for name in ("decode_mode", "kv_cache", "timed_with"):
            _check_text(name, getattr(self, name))
        _check_int("repeats", self.repeats, 0)
        for name, cls in SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise RowError(f"{name} must be a {cls.__name__} section, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.raw, dict):
            raise RowError(f"raw must be a dict, got {type(self.raw).__name__}")

    @classmethod
    def new(cls, model: str, variant: str, device: str, batch_size: int, prompt_tokens: int, new_tokens: int,
            **columns) -> ResultRow:
        """A row as ``results.new_row`` starts it (status ok, random_weights from the model's name), then
        ``columns`` by their flat names (a section may also be passed whole: ``load=Load(...)``)."""
        from .config import is_random
        sections = {k: columns.pop(k) for k in list(columns) if k in SECTIONS or k == RAW}
        row = cls(model, variant, device, batch_size, prompt_tokens, new_tokens, random_weights=is_random(model),
                  **sections)
        return row.set(**columns)

    def set(self, **columns) -> ResultRow:
        """Set columns by their flat names, each checked by its section; returns the row."""
        unknown = [c for c in columns if c not in SECTION_OF and c not in _IDENTITY]
        if unknown:
            raise RowError(f"unknown result column(s) {', '.join(map(repr, unknown))}: the columns are "
                           f"results.COLUMNS")
        ident = {c: v for c, v in columns.items() if c in _IDENTITY}
        per_section: dict[str, dict] = {}
        for c, v in columns.items():
            if c in SECTION_OF:
                per_section.setdefault(SECTION_OF[c], {})[c] = v
        new = {name: replace(getattr(self, name), **vals) for name, vals in per_section.items()}   # validates
        if ident:
            replace(self, **ident, **new)   # validates the identity columns together, before anything changes
        for name, value in {**ident, **new}.items():
            setattr(self, name, value)
        return self

    def fail(self, status: str, error: str) -> ResultRow:
        return self.set(status=status, error=error)

    def get(self, column: str):
        if column in _IDENTITY:
            return getattr(self, column)
        if column in SECTION_OF:
            return getattr(getattr(self, SECTION_OF[column]), column)
        raise RowError(f"unknown result column {column!r}")

    @property
    def key(self) -> tuple:
        return tuple(getattr(self, c) for c in KEY)

    def to_dict(self) -> dict:
        """The flat row of the files: every column of ``results.COLUMNS`` in order, then ``raw``."""
        d = {c: self.get(c) for c in COLUMNS}
        d[RAW] = self.raw
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ResultRow:
        """A flat row (a results.json row, an event's row) as a ResultRow; unknown keys are an error."""
        d = dict(d)
        raw = d.pop(RAW, {})
        ident = {c: d.pop(c) for c in _IDENTITY if c in d}
        missing = [c for c in KEY if c not in ident]
        if missing:
            raise RowError(f"a result row needs {', '.join(KEY)}; missing: {', '.join(missing)}")
        return cls(**ident, raw=raw).set(**d)


def as_dict(row: ResultRow | dict) -> dict:
    """The flat dict of a row, typed or already flat."""
    return row.to_dict() if isinstance(row, ResultRow) else row
