"""What one benchmark run measures: ``RunConfig``, validated in ``__post_init__`` with messages meant for people.

A model is a catalog key (``smollm2-135m-instruct``), a local folder, a Hugging Face id, or ``random:<arch>``:
an architecture from ``benchmarks/architectures/<arch>.json`` built with random weights (speed and memory are
real, answers are not). ``random_weights=True`` reads every bare model name as an architecture.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import asdict, dataclass, field, fields

RANDOM_PREFIX = "random:"
MAX_NEW_TOKENS = 8192
MAX_PROMPT_TOKENS = 131072
DECODE_MODES = ("auto", "fast", "eager", "transformers-static", "fast-unfused", "fast-tinygemm")
# the fast decoder without its fused q/k/v and gate/up projections (FastDecoder(fuse=False)): the A/B of the fusion
UNFUSED_MODE = "fast-unfused"
# the fast decoder with GPTQ/AWQ's one-row products on tinygemm instead of the Triton GEMV (kernel triton-gemv):
# the A/B of that kernel, on the same loaded model
TINYGEMM_MODE = "fast-tinygemm"
# the fast decoder's A/B modes: each a decoder of its own, its rows labelled <variant>+<mode>
AB_MODES = (UNFUSED_MODE, TINYGEMM_MODE)
# the peer: transformers' own generate(cache_implementation="static") on the same model, prompt and tokens, a row
# beside ours so a table shows "x transformers" as well as the roofline fraction (--peer transformers-static)
PEER_MODES = ("transformers-static",)
KV_CACHES = ("default", "int8", "int4", "int2")   # playground.engine.KV_CACHE_OPTIONS (kept import-light here)
DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# keyword arguments of benchmarks.quality.evaluate_quality that RunConfig.quality_options may set (lowest value)
QUALITY_OPTIONS = {"ppl_en_tokens": 0, "ppl_zh_tokens": 0, "mc_items": 0, "mc_set": None, "max_length": 2,
                   "stride": 1}


class ConfigError(ValueError):
    """A setting of the run is wrong; the message says which and why."""


def _int_list(name: str, value, lo: int, hi: int) -> list[int]:
    if isinstance(value, (int, str)):
        value = [value]
    out = []
    for v in value:
        try:
            iv = int(str(v).strip())
        except ValueError:
            raise ConfigError(f"{name}: {v!r} is not an integer") from None
        if not lo <= iv <= hi:
            raise ConfigError(f"{name}: {iv} is out of range [{lo}, {hi}]")
        if iv in out:
            raise ConfigError(f"{name}: {iv} is listed twice")
        out.append(iv)
    if not out:
        raise ConfigError(f"{name}: give at least one value")
    return out


def _str_list(name: str, value) -> list[str]:
    if isinstance(value, str):
        value = [value]
    out = []
    for v in value:
        v = str(v).strip()
        if not v:
            raise ConfigError(f"{name}: an empty name was given")
        if v in out:
            raise ConfigError(f"{name}: {v!r} is listed twice")
        out.append(v)
    if not out:
        raise ConfigError(f"{name}: give at least one")
    return out


@dataclass
class RunConfig:
    models: list[str]
    variants: list[str] = field(default_factory=lambda: ["bf16"])
    batch_sizes: list[int] = field(default_factory=lambda: [1])
    prompt_tokens: list[int] = field(default_factory=lambda: [512])
    new_tokens: list[int] = field(default_factory=lambda: [256])
    repeats: int = 3
    warmup: int = 1
    device: str = "auto"                 # auto: cuda when a GPU is present, else cpu
    out: str | None = None               # results folder (results/NAME); None: keep rows in memory only
    seed: int = 0
    max_memory: str | None = None        # place the model over several devices: "auto" or "0=70GiB,1=70GiB"
    memory_cap_gb: float | None = None   # CPU: address-space headroom above the worker after imports;
    #                                      CUDA: cap on the torch allocator. Going over is a real OOM → oom row.
    random_weights: bool = False         # read bare model names as architectures (random:<arch>)
    overhead_check: bool = True          # time a bare model.generate beside each bs=1 measurement
    timeout_s: float | None = None       # per (model, variant) worker; None: no limit
    time_budget_s: float | None = None   # the whole run: a worker gets what is left; one cut or never started by it
    #                                      becomes an error row saying so (--resume measures it again)
    variant_options: dict = field(default_factory=dict)  # playground.variants.VariantOptions fields
    decode_modes: list[str] = field(default_factory=lambda: ["auto"])  # auto (fast on CUDA), fast, eager: a row each
    kv_cache: list[str] = field(default_factory=lambda: ["default"])   # KV-cache storage: a row each (quantized: eager)
    name: str | None = None
    quality: bool = False                # perplexity (en, zh) + multiple-choice accuracy per real-weight variant
    quality_options: dict = field(default_factory=dict)  # benchmarks.quality.evaluate_quality keyword arguments

    def __post_init__(self):
        self.models = _str_list("models", self.models)
        if self.random_weights:
            self.models = [m if m.startswith(RANDOM_PREFIX) else RANDOM_PREFIX + m for m in self.models]
        self.variants = _str_list("variants", self.variants)
        self.batch_sizes = _int_list("batch_sizes", self.batch_sizes, 1, 1024)
        self.prompt_tokens = _int_list("prompt_tokens", self.prompt_tokens, 1, MAX_PROMPT_TOKENS)
        self.new_tokens = _int_list("new_tokens", self.new_tokens, 1, MAX_NEW_TOKENS)
        for name, lo in (("repeats", 1), ("warmup", 0), ("seed", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.repeats > 1000:
            raise ConfigError(f"repeats must be at most 1000, got {self.repeats}")
        self.device = str(self.device).strip().lower()
        if not DEVICE_RE.match(self.device):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        self._check_max_memory()
        if self.memory_cap_gb is not None and not (isinstance(self.memory_cap_gb, (int, float))
                                                   and self.memory_cap_gb > 0):
            raise ConfigError(f"memory_cap_gb must be a positive number of GB, got {self.memory_cap_gb!r}")
        if self.timeout_s is not None and not (isinstance(self.timeout_s, (int, float)) and self.timeout_s > 0):
            raise ConfigError(f"timeout_s must be a positive number of seconds, got {self.timeout_s!r}")
        if self.time_budget_s is not None and (isinstance(self.time_budget_s, bool) or not (
                isinstance(self.time_budget_s, (int, float)) and self.time_budget_s > 0)):
            raise ConfigError(f"time_budget_s must be a positive number of seconds, got {self.time_budget_s!r}")
        self.decode_modes = _str_list("decode_modes", self.decode_modes)
        bad = [m for m in self.decode_modes if m not in DECODE_MODES]
        if bad:
            raise ConfigError(f"decode_modes: unknown {', '.join(bad)}: choose from {', '.join(DECODE_MODES)}")
        self.kv_cache = _str_list("kv_cache", self.kv_cache)
        bad = [k for k in self.kv_cache if k not in KV_CACHES]
        if bad:
            raise ConfigError(f"kv_cache: unknown {', '.join(bad)}: choose from {', '.join(KV_CACHES)}")
        self._check_variants()
        self._check_models()
        self._check_quality()

    def _check_max_memory(self) -> None:
        from playground.errors import InvalidParameterError
        from playground.placement import spread_option
        if self.max_memory is None or str(self.max_memory).strip() == "":
            self.max_memory = None
            return
        if self.device == "cpu":
            raise ConfigError("max_memory places a model over GPUs (device_map=\"auto\"); device cpu contradicts "
                              "it (leave --device auto or cuda)")
        try:
            spread_option(self.max_memory)
        except InvalidParameterError as exc:
            raise ConfigError(str(exc)) from None

    def _check_variants(self) -> None:
        from playground.variants import VARIANTS, VariantOptions
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ConfigError(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
        try:
            VariantOptions(**self.variant_options)
        except TypeError as exc:
            raise ConfigError(f"variant_options: {exc}") from None
        except ValueError as exc:
            raise ConfigError(f"variant_options: {exc}") from None

    def _check_models(self) -> None:
        from .random_weights import list_architectures, load_architecture
        for m in self.models:
            if m.startswith(RANDOM_PREFIX):
                arch = m[len(RANDOM_PREFIX):]
                try:
                    load_architecture(arch)
                except (FileNotFoundError, ValueError) as exc:
                    raise ConfigError(f"model {m}: {exc} (known architectures: "
                                      f"{', '.join(list_architectures())})") from None

    def _check_quality(self) -> None:
        if not isinstance(self.quality, bool):
            raise ConfigError(f"quality must be true or false, got {self.quality!r}")
        if not isinstance(self.quality_options, dict):
            raise ConfigError(f"quality_options must be a dict, got {self.quality_options!r}")
        for key, value in self.quality_options.items():
            if key not in QUALITY_OPTIONS:
                raise ConfigError(f"quality_options: unknown setting {key!r} (known: {', '.join(QUALITY_OPTIONS)})")
            if key == "mc_set":
                from .quality import MC_SETS   # imports torch: only when a set is named
                if value not in MC_SETS:
                    raise ConfigError(f"quality_options: mc_set must be one of {', '.join(MC_SETS)}, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < QUALITY_OPTIONS[key]:
                raise ConfigError(f"quality_options: {key} must be an integer >= {QUALITY_OPTIONS[key]}, "
                                  f"got {value!r}")

    # -- helpers ---------------------------------------------------------------------------------------------
    def combos(self) -> list[tuple[int, int, int]]:
        """Every (batch_size, prompt_tokens, new_tokens) measured for one (model, variant)."""
        return list(itertools.product(self.batch_sizes, self.prompt_tokens, self.new_tokens))

    def units_per_variant(self) -> int:
        """Progress steps of one (model, variant): its load, then a row per combo × decode mode × KV cache."""
        return 1 + len(self.combos()) * len(self.decode_modes) * len(self.kv_cache)

    def units(self) -> int:
        """Progress steps of the whole sweep."""
        return len(self.models) * len(self.variants) * self.units_per_variant()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in fields(cls)}
        extra = set(d) - known
        if extra:
            raise ConfigError(f"unknown setting(s) {', '.join(sorted(extra))}")
        return cls(**d)


def is_random(model: str) -> bool:
    return model.startswith(RANDOM_PREFIX)
