"""The variant registry: one entry per way of loading a model (fp32 … awq).

Each entry is registered with ``@register_variant(...)`` and turns ``(source, options, device)`` into a
``LoadPlan``: which folder to load and which ``from_pretrained`` keyword arguments to pass. GPTQ and AWQ first
make a quantized checkpoint once (calibrated on text shipped in the repo) and cache it, keyed by model and
settings, so later loads read the cache and calibration time is reported apart from load time.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .catalog import ModelSource, cache_root
from .errors import InvalidParameterError, VariantUnsupportedError
from .progress import Progress

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class VariantOptions:
    """Knobs of the quantized variants. Defaults follow the libraries' defaults."""
    compute_dtype: str = "bf16"          # bnb 4-bit compute dtype / dtype of the non-quantized parts
    double_quant: bool = False           # bnb 4-bit nested quantization of the scales
    int8_threshold: float = 6.0          # LLM.int8 outlier threshold
    skip_modules: tuple[str, ...] = ()   # modules left in high precision (lm_head is always skipped by bnb)
    bits: int = 4                        # gptq / awq
    group_size: int = 128                # gptq / awq (-1: one group per row)
    calibration_samples: int = 32        # gptq / awq, paragraphs of playground/data/calibration.txt
    kernel: str | None = None            # gptq / awq backend to force (e.g. "torch", "marlin"); None: auto
    fast_decode: str = "auto"            # static KV cache + compiled decode step: "auto" (on for CUDA, int8 aside),
                                         # "on", "off"
    tune_kernels: str = "auto"           # coordinate-descent tuning of the compiled step's Triton kernels (what
                                         # gpt-fast turns on; a longer first compile, in this decoder only): "auto"
                                         # (on CUDA for a variant registered with tune_decode_by_default), "on", "off"

    def __post_init__(self):
        if self.compute_dtype not in DTYPES:
            raise InvalidParameterError(f"compute_dtype must be one of {list(DTYPES)}, got {self.compute_dtype!r}")
        if self.bits not in (2, 3, 4, 8):
            raise InvalidParameterError(f"bits must be 2, 3, 4 or 8, got {self.bits}")
        if self.group_size != -1 and (self.group_size < 16 or self.group_size & (self.group_size - 1)):
            raise InvalidParameterError(f"group_size must be -1 or a power of two >= 16, got {self.group_size}")
        if not 0.0 <= self.int8_threshold <= 100.0:
            raise InvalidParameterError(f"int8_threshold must be in [0, 100], got {self.int8_threshold}")
        if not 1 <= self.calibration_samples <= 4096:
            raise InvalidParameterError(
                f"calibration_samples must be in [1, 4096], got {self.calibration_samples}")
        if self.fast_decode not in ("auto", "on", "off"):
            raise InvalidParameterError(f"fast_decode must be auto, on or off, got {self.fast_decode!r}")
        if isinstance(self.tune_kernels, bool):          # the earlier bool option: True is "on", False "off"
            object.__setattr__(self, "tune_kernels", "on" if self.tune_kernels else "off")
        if self.tune_kernels not in ("auto", "on", "off"):
            raise InvalidParameterError(f"tune_kernels must be auto, on or off, got {self.tune_kernels!r}")
        object.__setattr__(self, "skip_modules", tuple(self.skip_modules))

    def wants_fast_decode(self, device: str, variant: str | None = None) -> bool:
        """"on"; or "auto" on CUDA for a variant whose compiled decoder is faster than its eager one."""
        return self.fast_decode == "on" or (self.fast_decode == "auto" and fast_decode_by_default(variant, device))

    def wants_tuned_kernels(self, device: str, variant: str | None = None) -> bool:
        """"on"; or "auto" on CUDA for a variant whose one-row products are slow untuned
        (``tune_decode_by_default``)."""
        spec = VARIANTS.get(variant) if variant else None
        return self.tune_kernels == "on" or (self.tune_kernels == "auto" and str(device).startswith("cuda")
                                             and spec is not None and spec.tune_decode_by_default)


def fast_decode_by_default(variant: str | None, device: str) -> bool:
    """What ``fast_decode="auto"`` (and the benchmark's ``auto`` decode mode) picks: the compiled decoder on CUDA,
    except for a variant registered with ``fast_decode_by_default=False`` (its own note says why)."""
    spec = VARIANTS.get(variant) if variant else None
    return str(device).startswith("cuda") and (spec is None or spec.fast_decode_by_default)


@dataclass
class LoadPlan:
    path: str                                  # what to pass to from_pretrained
    kwargs: dict = field(default_factory=dict)  # extra from_pretrained kwargs
    quantize_s: float = 0.0                    # time spent making a quantized checkpoint in this call
    quantized_cache: str | None = None         # folder of the cached quantized checkpoint, if any
    loader: str = "transformers"               # "transformers" or "gptqmodel"
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    weight_bits: int                          # nominal bits per quantized weight
    quantized_layer_classes: tuple[str, ...]  # class (or base class) names of its quantized Linears (tests check)
    requires: tuple[str, ...]                 # importable modules needed
    plan: Callable[[ModelSource, VariantOptions, str, Progress], LoadPlan]
    cpu_ok: bool = True
    quantizes_on_load: bool = False           # bitsandbytes quantizes while loading: load time includes it
    fast_decode_by_default: bool = True       # fast_decode="auto" compiles its decode step on CUDA
    eager_note: str = ""                      # why not, when it is False (shown with the reply's notes)
    tune_decode_by_default: bool = False      # tune_kernels="auto" tunes its compiled decode step's kernels on CUDA

    def check_supported(self, device: str) -> None:
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            raise VariantUnsupportedError(
                f"variant {self.name} needs the Python package(s) {', '.join(missing)}: "
                "pip install -r requirements.txt")
        if device.startswith("cuda"):
            import torch
            if not torch.cuda.is_available():
                raise VariantUnsupportedError(f"device {device} requested but no CUDA GPU is available here")
            if self.name == "bf16" and not torch.cuda.is_bf16_supported():
                raise VariantUnsupportedError("this GPU has no bf16 support: use fp16 or fp32")
        elif device == "cpu" and not self.cpu_ok:
            raise VariantUnsupportedError(f"variant {self.name} needs a CUDA GPU")
        elif device == "mps":
            raise VariantUnsupportedError("mps is not supported by this playground yet: use cpu or cuda")


VARIANTS: dict[str, Variant] = {}


def register_variant(name: str, *, description: str, weight_bits: int, layer_classes: tuple[str, ...],
                     requires: tuple[str, ...] = (), quantizes_on_load: bool = False,
                     fast_decode_by_default: bool = True, eager_note: str = "", tune_decode_by_default: bool = False):
    def decorator(fn):
        if name in VARIANTS:
            raise ValueError(f"variant {name} registered twice")
        VARIANTS[name] = Variant(name=name, description=description, weight_bits=weight_bits,
                                 quantized_layer_classes=layer_classes, requires=requires, plan=fn,
                                 quantizes_on_load=quantizes_on_load, fast_decode_by_default=fast_decode_by_default,
                                 eager_note=eager_note, tune_decode_by_default=tune_decode_by_default)
        return fn
    return decorator


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise VariantUnsupportedError(f"unknown variant {name!r}: choose one of {', '.join(VARIANTS)}") from None


def torch_dtype(name: str):
    import torch
    return getattr(torch, DTYPES[name])


# ---- plain dtypes ---------------------------------------------------------------------------------------------
SKELETON_16BIT_NOTE = ("random weights of a shape too big to write in 16 bits: the checkpoint holds the embeddings, "
                       "norms and lm_head; transformers initializes the decoder's linear layers on their devices "
                       "while loading, so load time is that, not a read of the whole checkpoint")


def _dtype_plan(dtype_name: str):
    def plan(source: ModelSource, options: VariantOptions, device: str, progress: Progress) -> LoadPlan:
        from .random_checkpoints import is_skeleton
        return LoadPlan(path=source.path, kwargs={"dtype": torch_dtype(dtype_name)},
                        notes=[SKELETON_16BIT_NOTE] if is_skeleton(source.path) else [])
    return plan


for _name, _bits, _desc in (("fp32", 32, "full precision float32"),
                            ("bf16", 16, "bfloat16 (the usual baseline)"),
                            ("fp16", 16, "float16")):
    register_variant(_name, description=_desc, weight_bits=_bits, layer_classes=("Linear",))(_dtype_plan(_name))


# ---- bitsandbytes -------------------------------------------------------------------------------------------
@register_variant("int8", description="bitsandbytes LLM.int8 (8-bit weights, fp16 outliers)", weight_bits=8,
                  layer_classes=("Linear8bitLt",), requires=("bitsandbytes",), quantizes_on_load=True,
                  fast_decode_by_default=False,
                  eager_note="int8 decodes eagerly by default: its compiled decoder measured 0.48x the eager "
                             "tok/s after a 72 s compile (H200, GLM-6B class, results/gpu-h200-glm-6b-class-bs1); "
                             "set fast decode to 'on' to compile it anyway")
def _int8_plan(source, options: VariantOptions, device, progress) -> LoadPlan:
    from transformers import BitsAndBytesConfig
    cfg = BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=options.int8_threshold,
                             llm_int8_skip_modules=list(options.skip_modules) or None)
    return LoadPlan(path=source.path, kwargs={"quantization_config": cfg,
                                              "dtype": torch_dtype(options.compute_dtype)},
                    notes=["load time includes quantization (bitsandbytes quantizes while loading)"])


# ---- torchao: int8 weight-only --------------------------------------------------------------------------------
@register_variant("int8-wo", description="int8 weight-only (torchao): per-channel scales, no outlier split",
                  weight_bits=8, layer_classes=("Linear",), requires=("torchao",), quantizes_on_load=True,
                  tune_decode_by_default=True)
def _int8_weight_only_plan(source, options: VariantOptions, device, progress) -> LoadPlan:
    """Every Linear's weight becomes int8 with one scale per output channel (torchao ``Int8WeightOnlyConfig``);
    activations stay in ``compute_dtype``. Unlike LLM.int8 (``int8``) nothing is split off in 16 bits, so a
    product is one int8-weight matmul: the guides' int8 is bitsandbytes', this is the fast one (gpt-fast's)."""
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig
    # set_inductor_config=False: torchao's default turns on coordinate-descent tuning for every later compile of
    # the process (bf16's included), which made one int8-wo warm-up take 6 minutes on an H200. This variant's own
    # decoder still tunes (tune_decode_by_default, ``tune_kernels="auto"``): untuned, inductor leaves its one-row
    # products as a bf16 copy of each int8 weight + cuBLAS, and it decoded at 0.09x bf16 (H200, d3c7091)
    config = Int8WeightOnlyConfig(set_inductor_config=False)
    return LoadPlan(path=source.path, kwargs={"quantization_config": TorchAoConfig(config),
                                              "dtype": torch_dtype(options.compute_dtype)},
                    notes=["load time includes quantization (torchao quantizes while loading)"])


def _bnb4_plan(quant_type: str):
    def plan(source, options: VariantOptions, device, progress) -> LoadPlan:
        from transformers import BitsAndBytesConfig

        from . import random_checkpoints
        dtype = torch_dtype(options.compute_dtype)
        if random_checkpoints.is_skeleton(source.path):
            # a shape too big to build in bf16 (benchmarks/random_weights.py): write the 4-bit codes directly
            extra = {"compute_dtype": options.compute_dtype, "double_quant": options.double_quant}
            out = quantized_cache_dir(source, quant_type, options, extra)
            quantize_s = _make_once(out, quant_type, options, source, lambda: (
                random_checkpoints.write_random_bnb4_checkpoint(
                    source.path, str(out), quant_type, dtype, options.double_quant,
                    progress=progress)))
            return LoadPlan(path=str(out), kwargs={"dtype": dtype}, quantize_s=quantize_s, quantized_cache=str(out),
                            notes=[RANDOM_CODES_NOTE, "a pre-quantized checkpoint: bitsandbytes does not quantize "
                                                      "while loading"])
        cfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                 bnb_4bit_compute_dtype=dtype,
                                 bnb_4bit_use_double_quant=options.double_quant,
                                 llm_int8_skip_modules=list(options.skip_modules) or None)
        return LoadPlan(path=source.path, kwargs={"quantization_config": cfg, "dtype": dtype},
                        notes=["load time includes quantization (bitsandbytes quantizes while loading)"])
    return plan


register_variant("nf4", description="bitsandbytes 4-bit NormalFloat", weight_bits=4, layer_classes=("Linear4bit",),
                 requires=("bitsandbytes",), quantizes_on_load=True)(_bnb4_plan("nf4"))
register_variant("fp4", description="bitsandbytes 4-bit float", weight_bits=4, layer_classes=("Linear4bit",),
                 requires=("bitsandbytes",), quantizes_on_load=True)(_bnb4_plan("fp4"))


# ---- gptqmodel: GPTQ and AWQ ---------------------------------------------------------------------------------
def quantized_cache_dir(source: ModelSource, method: str, options: VariantOptions, extra: dict | None = None) -> Path:
    """Cache folder keyed by model + every setting that changes the checkpoint (``extra``: the method's own)."""
    key = {"model": source.path, "method": method, "bits": options.bits, "group_size": options.group_size,
           "calibration_samples": options.calibration_samples, "calibration_sha": _calibration_sha(), **(extra or {})}
    from .random_checkpoints import RANDOM_CHECKPOINT_FORMAT, is_random_weights
    if is_random_weights(source.path):
        key["random_checkpoint_format"] = RANDOM_CHECKPOINT_FORMAT   # a fixed writer makes a new folder
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    label = Path(source.path).name if source.local else source.path.replace("/", "--")
    return cache_root() / "quantized" / f"{label}-{method}-w{options.bits}g{options.group_size}-{digest}"


def _make_once(out: Path, method: str, options: VariantOptions, source: ModelSource, make) -> float:
    """Run ``make()`` (which writes the checkpoint ``out`` atomically) unless ``out`` exists, one process at a time;
    returns the seconds it took (0 when the cached folder was used)."""
    if (out / "config.json").exists():
        return 0.0
    from filelock import FileLock
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if (out / "config.json").exists():
            return 0.0
        t0 = time.perf_counter()
        make()
        quantize_s = time.perf_counter() - t0
        (out / "playground_quantization.json").write_text(json.dumps(
            {"method": method, "options": asdict(options), "source": source.path,
             "quantize_s": round(quantize_s, 2)}, indent=2))
        return quantize_s


RANDOM_CODES_NOTE = "random weights: random 4-bit codes of the real shapes, written directly (no calibration)"


def _calibration_sha() -> str:
    path = Path(__file__).parent / "data" / "calibration.txt"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.exists() else "none"


def _gptqmodel_plan(method: str):
    def plan(source: ModelSource, options: VariantOptions, device: str, progress: Progress) -> LoadPlan:
        from . import gptq_awq, random_checkpoints
        out = quantized_cache_dir(source, method, options)
        random = random_checkpoints.is_random_weights(source.path)

        def make():
            if random:
                random_checkpoints.write_random_checkpoint(source.path, str(out), method, options.bits,
                                                           options.group_size, progress)
                return
            quantize = gptq_awq.quantize_gptq if method == "gptq" else gptq_awq.quantize_awq
            quantize(source.path, str(out), bits=options.bits, group_size=options.group_size,
                     calibration=gptq_awq.calibration_texts(options.calibration_samples), progress=progress,
                     device=device)
        quantize_s = _make_once(out, method, options, source, make)
        return LoadPlan(path=str(out), quantize_s=quantize_s, quantized_cache=str(out), loader="gptqmodel",
                        notes=[RANDOM_CODES_NOTE] if random else [])
    return plan


register_variant("gptq", description="GPTQ 4-bit (gptqmodel), group size 128, calibrated on repo text",
                 weight_bits=4, layer_classes=("BaseQuantLinear",),
                 requires=("gptqmodel", "optimum"))(_gptqmodel_plan("gptq"))
register_variant("awq", description="AWQ 4-bit (gptqmodel), group size 128, calibrated on repo text",
                 weight_bits=4, layer_classes=("BaseQuantLinear",), requires=("gptqmodel",))(_gptqmodel_plan("awq"))
