"""Real 4-bit GPTQ and AWQ checkpoints made with gptqmodel on CPU, loaded back with transformers.

Checked with gptqmodel 7.6.0, transformers 5.17, optimum 2.3, torch 2.13 CPU, on SmolLM2-135M and Gemma-3-270M.

* ``quantize_gptq`` / ``quantize_awq`` use gptqmodel's own API (``GPTQModel.load(src, GPTQConfig|AWQConfig)`` ->
  ``.quantize(token rows)`` -> ``.save(tmp)``), then ``os.replace`` the temporary folder into place.
  transformers' ``GPTQConfig(dataset=..., tokenizer=...)`` route (optimum's sequential loop over gptqmodel's GPTQ
  class) was far slower on 2 cores (>60 s per decoder layer vs ~3-4 s), and transformers cannot make AWQ at all.
* Both kinds load with plain ``transformers.AutoModelForCausalLM.from_pretrained(out_dir)`` on CPU (transformers
  hands the Linear layers to gptqmodel kernels; AWQ needs no ``GPTQModel.load``). ``load_quantized`` adds a kernel
  choice that works for the checkpoint's shapes (``_pick_backend``) and reports the QuantLinear class that ran.

Caveats found while writing it:

* gptqmodel's CPU int4 kernels (``TorchAtenLinear``/``TorchFusedLinear`` and the AWQ twins; all call
  ``aten::_weight_int4pack_mm_for_cpu``) need every ``in_features`` to be a multiple of ``group_size`` although they
  declare ``SUPPORTS_AUTO_PADDING = True`` (gptqmodel/nn_modules/qlinear/torch_aten_kernel.py, class attributes;
  the error is raised in ``_fused_op_forward``). SmolLM2-135M has hidden size 576 = 4.5 x 128, so a group_size=128
  checkpoint fails at the first forward ("expect K to be divisible by qGroupSize"); the plain ``TorchLinear``
  (``gptq_torch``) runs it at ~0.2 tok/s and ``TorchInt8Linear`` at ~80% of the int4 kernel's speed. We therefore
  lower ``group_size`` to the largest power of two dividing every quantized layer's input size (128 -> 64 for
  SmolLM2; Gemma-3-270M keeps 128) and say so (warning + progress message + ``playground_quant.json``).
* gptqmodel needs ``GPTQMODEL_CPU_WORKERS`` >= 2 (see ``_prepare_env``); its default is 1 on a 2-core machine.
* Gemma 3: ``GPTQModel.load`` leaves extra keys in ``config.rope_parameters`` that make ``save`` fail
  (``_repair_rope_parameters``).
* First use of gptqmodel's packing compiles a C++ extension, ``pack_block_cpu`` (~42 s on 2 busy cores, needs g++),
  into ``$GPTQMODEL_EXT_BUILD`` or ``$GPTQMODEL_TORCH_EXTENSIONS_DIR/pack_block_cpu`` or
  ``~/.cache/gptqmodel/torch_extensions/pack_block_cpu/<hash>`` (gptqmodel/utils/cpp.py,
  ``default_torch_ops_build_root`` / ``_pack_block_extension``; ``GPTQMODEL_CACHE_DIR`` is only for downloaded
  sources such as CUTLASS). We set ``GPTQMODEL_DISABLE_PACK_EXT=1`` (unless set), which packs in Python
  (gptqmodel/nn_modules/qlinear/__init__.py, ``pack_block``): same total CPU time here, no compile, no g++.
  Loading/inference compiles nothing.
* gptqmodel's INFO logging and progress bars are silenced (``_quiet_gptqmodel``); its WARN/ERROR lines stay.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

from .atomic_dir import building

ProgressFn = Callable[[float, str], None]

#: Calibration samples are cut to this many tokens. GPTQ's cost on CPU is dominated by the per-column
#: update loop (independent of the number of tokens); the forward passes grow with tokens x samples.
CALIB_MAX_TOKENS = 256
#: gptqmodel drops calibration rows shorter than this (its own default is 10).
CALIB_MIN_TOKENS = 10
#: Name of the sidecar file written next to the checkpoint (what was asked, what was done, how long it took).
SIDECAR = "playground_quant.json"

_DATA_FILE = Path(__file__).resolve().parent / "data" / "calibration.txt"
_QUIET_DONE = False


# --------------------------------------------------------------------------------------------------------------
# calibration text
# --------------------------------------------------------------------------------------------------------------
def calibration_texts(n: int = 128) -> list[str]:
    """Up to ``n`` paragraphs of ``playground/data/calibration.txt`` (blank-line separated, '#' lines skipped).

    The file is grouped by topic (science, cooking, history, programming, travel, chat Q&A, Chinese, ...), so
    when ``n`` is smaller than the number of paragraphs (150) we take every k-th one (deterministic, evenly
    spread) to keep all topics in a small sample. Returns all paragraphs when ``n`` >= 150.
    Whitespace inside a paragraph is kept (code samples).
    """
    if n <= 0:
        return []
    text = _DATA_FILE.read_text(encoding="utf-8")
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    paragraphs = [p.strip("\n") for p in re.split(r"\n[ \t]*\n", "\n".join(lines))]
    paragraphs = [p for p in paragraphs if p.strip()]
    if n >= len(paragraphs):
        return paragraphs
    step = len(paragraphs) / n
    return [paragraphs[int(i * step)] for i in range(n)]


# --------------------------------------------------------------------------------------------------------------
# environment / logging
# --------------------------------------------------------------------------------------------------------------
def _prepare_env(device: str) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # gptqmodel needs >= 2 CPU workers: its pool reserves a 2-worker "model_loader:cpu" sub-pool
    # (gptqmodel/__init__.py, _build_device_thread_pool) and raises "Virtual pool 'model_loader:cpu' requests 2
    # workers but parent 'cpu' only has 1" (gptqmodel/utils/threadx.py, DeviceThreadPool.__init__) otherwise --
    # and its default is (cores + 1) // 2 (_default_cpu_workers), i.e. 1 on a 2-core machine. Read once, when
    # gptqmodel builds its pool (first quantize), so this must run before that.
    try:
        workers = int(os.environ.get("GPTQMODEL_CPU_WORKERS", "0"))
    except ValueError:
        workers = 0
    if workers < 2:
        os.environ["GPTQMODEL_CPU_WORKERS"] = str(max(2, min(os.cpu_count() or 2, 8)))
    # Pack in Python instead of JIT-compiling gptqmodel's pack_block_cpu C++ extension on first use (~30-45 s and
    # g++ on a fresh 2-core machine): measured no slower for these model sizes (module docstring).
    os.environ.setdefault("GPTQMODEL_DISABLE_PACK_EXT", "1")
    _quiet_gptqmodel()


def _quiet_gptqmodel() -> None:
    """Keep gptqmodel's warnings and errors, drop its INFO flood and live progress bars.

    gptqmodel logs through the shared ``logbar`` logger, which ``LogBar.shared()`` resets to INFO when it first
    creates it (logbar/logbar.py, ``LogBar.shared``), so we create it first and lower it afterwards. Its progress
    bars (one redraw per module per batch: thousands of lines in CI logs) are replaced by gptqmodel's own no-op
    ``_SilentProgress`` through the switch it uses under pytest (gptqmodel/utils/logger.py,
    ``_suppress_live_renderables``). Set ``PLAYGROUND_GPTQMODEL_VERBOSE=1`` to see everything.
    """
    global _QUIET_DONE
    if _QUIET_DONE or os.environ.get("PLAYGROUND_GPTQMODEL_VERBOSE") == "1":
        return
    _QUIET_DONE = True
    try:
        from logbar import LogBar

        LogBar.shared().setLevel(logging.WARNING)
    except Exception:  # pragma: no cover - logbar layout changed: stay noisy rather than fail
        pass
    for name in ("tokenicer", "tokenicer.tokenicer", "defuser"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        import gptqmodel.utils.logger as gm_logger

        gm_logger._suppress_live_renderables = lambda: True  # noqa: SLF001 - documented above
    except Exception:  # pragma: no cover
        pass


def _import_gptqmodel():
    try:
        import gptqmodel  # noqa: F401
    except ImportError as exc:  # pragma: no cover - dependency missing
        from .errors import VariantUnsupportedError

        raise VariantUnsupportedError(
            "GPTQ/AWQ needs gptqmodel (pip install 'gptqmodel>=7.0,<7.7' optimum): " + str(exc)
        ) from exc
    _quiet_gptqmodel()  # gptqmodel is imported now: patch its logger module too
    return gptqmodel


# --------------------------------------------------------------------------------------------------------------
# quantization
# --------------------------------------------------------------------------------------------------------------
def quantize_gptq(
    src_dir: str,
    out_dir: str,
    *,
    bits: int = 4,
    group_size: int = 128,
    calibration: list[str],
    progress: Optional[ProgressFn] = None,
    device: str = "cpu",
) -> None:
    """GPTQ-quantize the HF model folder ``src_dir`` into ``out_dir`` (written atomically).

    Format: gptq v1 (``quant_method: gptq``, sym, desc_act False), loadable with
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` (needs gptqmodel + optimum installed).
    ``group_size`` may be lowered (see module docstring); ``playground_quant.json`` in ``out_dir`` records it.
    """
    try:
        _quantize("gptq", src_dir, out_dir, bits=bits, group_size=group_size, calibration=calibration,
                  progress=progress, device=device)
    finally:
        drop_worker_references()


def quantize_awq(
    src_dir: str,
    out_dir: str,
    *,
    bits: int = 4,
    group_size: int = 128,
    calibration: list[str],
    progress: Optional[ProgressFn] = None,
    device: str = "cpu",
) -> None:
    """AWQ-quantize ``src_dir`` into ``out_dir`` (written atomically) with gptqmodel's AWQ (format ``gemm``).

    Asymmetric (zero point) 4-bit, the layout transformers' ``AwqConfig`` expects. The result loads with plain
    ``AutoModelForCausalLM.from_pretrained(out_dir)`` on CPU (transformers' AWQ integration hands the layers to
    gptqmodel kernels); ``GPTQModel.load`` is not needed.
    """
    try:
        _quantize("awq", src_dir, out_dir, bits=bits, group_size=group_size, calibration=calibration,
                  progress=progress, device=device)
    finally:
        drop_worker_references()


def _quantize(
    method: str,
    src_dir: str,
    out_dir: str,
    *,
    bits: int,
    group_size: int,
    calibration: list[str],
    progress: Optional[ProgressFn],
    device: str,
    max_tokens: int = CALIB_MAX_TOKENS,
) -> dict:
    from .errors import InvalidParameterError, ModelNotFoundError

    report = progress or (lambda fraction, message: None)
    src = Path(src_dir)
    if not (src / "config.json").is_file():
        raise ModelNotFoundError(f"{src_dir}: not a model folder (no config.json)")
    if isinstance(calibration, str) or not calibration or not all(isinstance(t, str) for t in calibration):
        raise InvalidParameterError("calibration must be a non-empty list of strings")
    if bits not in (2, 3, 4, 8):
        raise InvalidParameterError(f"bits must be 2, 3, 4 or 8 for {method.upper()}, got {bits}")
    if method == "awq" and bits != 4:
        raise InvalidParameterError("AWQ export (gemm format) supports bits=4 only")
    if group_size != -1 and (group_size < 16 or group_size & (group_size - 1)):
        raise InvalidParameterError(f"group_size must be -1 or a power of two >= 16, got {group_size}")

    t_start = time.perf_counter()
    cpu_start = time.process_time()
    report(0.0, f"{method.upper()}: loading {src.name}")
    _prepare_env(device)
    _import_gptqmodel()
    import torch
    from gptqmodel import AWQConfig, BACKEND, GPTQConfig, GPTQModel
    from gptqmodel.version import __version__ as gm_version
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(src))
    rows = _tokenize(tokenizer, calibration, max_tokens)
    if not rows:
        raise InvalidParameterError(f"no calibration text has at least {CALIB_MIN_TOKENS} tokens")

    # Decide the group size before loading: the CPU int4 kernels need in_features % group_size == 0.
    in_features = _linear_in_features(src)
    effective_gs = _compatible_group_size(group_size, in_features)
    if effective_gs != group_size:
        msg = (f"{method.upper()}: group_size {group_size} does not divide the input size of every layer "
               f"({sorted(in_features)}); using {effective_gs} so the CPU int4 kernels can run it")
        warnings.warn(msg, stacklevel=3)
        report(0.01, msg)

    common = dict(bits=bits, group_size=effective_gs, device=device,
                  # small models: keep modules in RAM instead of gptqmodel's default /tmp/gptqmodel_* offload
                  offload_to_disk=False)
    if method == "gptq":
        # gptqmodel's default act_group_aware=True refuses group_size -1 ("requires group_size > 0",
        # gptqmodel/quantization/gptq.py, _validate_act_group_aware_shape): off for one group per row only
        qcfg = GPTQConfig(desc_act=False, sym=True, **common,
                          **({"act_group_aware": False} if effective_gs == -1 else {}))
        quant_backend = BACKEND.AUTO
    else:
        # AWQ gemm with zero points; pack on CPU with the portable torch kernel (the AUTO choice for gemm is
        # AWQ_GEMM, CUDA-only: gptqmodel/models/base.py, quantize(), "preferred_backend" block)
        qcfg = AWQConfig(sym=False, **common)
        quant_backend = BACKEND.AWQ_TORCH if str(device).startswith("cpu") else BACKEND.AUTO

    t_load = time.perf_counter()
    # the device goes in the config only: passing device= too is refused (gptqmodel/models/loader.py, from_pretrained)
    model = GPTQModel.load(str(src), qcfg)
    if method == "awq":
        # AWQ's scale search re-runs each layer and recomputes its rotary embeddings as ``rotary(x, pos)``, which
        # Gemma 3 refuses (its rotary needs the layer type: "missing 1 required positional argument:
        # 'layer_type'"); keep the embeddings the layer was called with instead (gptqmodel 7.6.0,
        # looper/awq_processor.py, _iter_module_forward_outputs; the flag is a BaseQModel class attribute)
        model.awq_preserve_explicit_position_embeddings = True
        _fix_awq_scaling_for_gemma3(model)
    n_layers = _num_layers(model)
    t_loaded = time.perf_counter()
    label = f"{method.upper()} calibration"
    report(0.05, f"{label}: 0/{n_layers} layers done ({len(rows)} samples of <= {max_tokens} tokens)")

    # Progress per layer part and per layer. gptqmodel calls both callbacks on its main loop's thread with
    # raise_in_place (looper/module_looper.py, callbackup / _subset_event_dispatch), so a ``report`` that raises
    # (the UI's Cancel: errors.LoadCancelled) ends ``model.quantize`` and ``building`` below drops the
    # half-written folder. (The finalize callback, submodule_finalized=True, can come from a watcher thread where
    # an exception is only logged: it reports nothing.)
    def on_layer(layer_idx: int, submodule_finalized: bool, **_: Any) -> None:
        if not submodule_finalized and n_layers:
            report(0.05 + 0.85 * min(1.0, (layer_idx + 1) / n_layers),
                   f"{label}: {layer_idx + 1}/{n_layers} layers done")

    def on_subset(stage: str = "", layer_idx: int = 0, subset_index: int = 0, subset_total: int = 1,
                  **_: Any) -> None:
        if stage == "quant_start" and n_layers:
            part = (subset_index + 1) / max(1, subset_total)
            report(0.05 + 0.85 * min(1.0, (layer_idx + part) / n_layers),
                   f"{label}: {layer_idx}/{n_layers} layers done (layer {layer_idx + 1}: part "
                   f"{subset_index + 1} of {subset_total})")

    model.layer_callback = on_layer
    model.subset_callback = on_subset

    with building(out_dir) as tmp:
        model.quantize(rows, batch_size=1, backend=quant_backend, calibration_data_min_length=CALIB_MIN_TOKENS)
        t_quantized = time.perf_counter()
        report(0.92, f"{method.upper()}: saving")   # raises here too when cancelled: nothing is saved
        _repair_rope_parameters(getattr(model, "model", None))
        # gptqmodel's writer print()s the file list and both config files on every save
        # (gptqmodel/models/writer.py, debug_saved_config); errors still raise.
        with contextlib.redirect_stdout(io.StringIO()):
            model.save(str(tmp))
        del model
        sidecar = {
            "method": method,
            "bits": bits,
            "group_size_requested": group_size,
            "group_size": effective_gs,
            "calibration_samples": len(rows),
            "calibration_tokens": int(sum(len(r["input_ids"]) for r in rows)),
            "calibration_max_tokens": max_tokens,
            "source": str(src),
            "device": device,
            "torch_threads": torch.get_num_threads(),
            "gptqmodel_cpu_workers": os.environ.get("GPTQMODEL_CPU_WORKERS"),
            "gptqmodel": gm_version,
            "seconds": {
                "load": round(t_loaded - t_load, 2),
                "quantize": round(t_quantized - t_loaded, 2),
                "save": round(time.perf_counter() - t_quantized, 2),
                "total": round(time.perf_counter() - t_start, 2),
                # CPU time of this process (all threads): less sensitive to other load on a shared machine
                "cpu_total": round(time.process_time() - cpu_start, 2),
            },
        }
        (tmp / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")
    report(1.0, f"{method.upper()}: done in {sidecar['seconds']['total']:.0f} s -> {out_dir}")
    return sidecar


def _is_gemma3(model) -> bool:
    cfg = getattr(getattr(model, "model", None), "config", None)
    return getattr(cfg, "model_type", "") in ("gemma3", "gemma3_text")


def _fix_awq_scaling_for_gemma3(model) -> None:
    """Gemma 3: AWQ scales only the pairs of Linear layers (v->o, up->down), none of the norm-folded groups.

    gptqmodel 7.6.0 treats Gemma 3 as Llama (models/definitions/gemma3.py: ``Gemma3QModel(LlamaQModel)``):
    it folds the gate/up scale into ``post_attention_layernorm``, but Gemma 3's MLP reads
    ``pre_feedforward_layernorm`` (``post_attention_layernorm`` feeds the residual), and it folds ``w / s`` into
    Gemma 3's norms, which multiply by ``1 + w`` (quantization/awq/quantize/scale.py, ``scale_ln_fcs``, handles
    Gemma and Gemma 2 only). English perplexity (benchmarks/quality.py, 4,096 tokens) came out at 141,871 (bf16:
    22.1). With both fixed, 2,862 on 1,024 tokens (bf16: 23.8): the MLP scales span orders of magnitude, and
    ``(1 + w) / s - 1`` stored in bf16 rounds most factors to 0. Without the norm-folded groups: 32.4 (keeping
    the input_layernorm group: 34.1). Those layers are still quantized, with AWQ's clipping search, just without
    an activation-aware scale.
    """
    if not _is_gemma3(model):
        return
    original = model.awq_get_modules_for_scaling

    def for_gemma3(module, input_feat, module_kwargs):
        nodes = original(module, input_feat, module_kwargs)
        norms = [m for m in module.modules() if "rmsnorm" in type(m).__name__.lower()]
        return [node for node in nodes if not any(node.get("prev_op") is m for m in norms)]
    model.awq_get_modules_for_scaling = for_gemma3


def _repair_rope_parameters(hf_model) -> None:
    """Undo a config corruption seen with Gemma 3 (per-layer-type RoPE) before saving.

    After ``GPTQModel.load`` the text config's ``rope_parameters`` ({"full_attention": {...},
    "sliding_attention": {...}}) has gained top-level ``"rope_type": "default"`` and ``"rope_theta":
    {"global": ..., "local": ...}`` (``Gemma3TextConfig.default_theta``); a plain ``AutoModelForCausalLM`` load does
    not do this. ``save_pretrained`` then validates the config and fails with "'str' object has no attribute
    'get'" (transformers/modeling_rope_utils.py, ``validate_rope``). Keep only the per-layer-type entries.
    """
    config = getattr(hf_model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        rope = getattr(cfg, "rope_parameters", None)
        layer_types = set(getattr(cfg, "layer_types", None) or ())
        if isinstance(rope, dict) and layer_types and layer_types & set(rope):
            for key in [k for k in rope if k not in layer_types]:
                rope.pop(key)


def _tokenize(tokenizer, texts: list[str], max_tokens: int) -> list[dict]:
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=max_tokens)["input_ids"]
        if len(ids) >= CALIB_MIN_TOKENS:
            rows.append({"input_ids": list(ids), "attention_mask": [1] * len(ids)})
    return rows


def _linear_in_features(src: Path, method: str | None = None, bits: int = 4) -> set[int]:
    """Input sizes of the Linear layers inside the decoder layers (the ones GPTQ/AWQ quantize).

    Reads only safetensors headers. Unquantized folder: 2-D ``*.weight`` -> shape[1]. Quantized folder:
    GPTQ ``qweight`` is ``[in * bits / 32, out]`` (int32 packing), AWQ gemm ``qweight`` is ``[in, out * bits / 32]``.
    """
    from safetensors import safe_open

    sizes: set[int] = set()
    for f in sorted(src.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                if ".layers." not in key or "norm" in key or "embed" in key:
                    continue
                if key.endswith(".qweight"):
                    shape = sf.get_slice(key).get_shape()
                    sizes.add(int(shape[0]) * 32 // bits if method == "gptq" else int(shape[0]))
                elif key.endswith(".weight") and method is None:
                    shape = sf.get_slice(key).get_shape()
                    if len(shape) == 2:
                        sizes.add(int(shape[1]))
    return sizes


def _compatible_group_size(group_size: int, in_features: set[int]) -> int:
    if group_size == -1 or not in_features:
        return group_size
    g = group_size
    while g >= 16:
        if all(k % g == 0 for k in in_features):
            return g
        g //= 2
    return -1  # per-channel: always valid


def _num_layers(model) -> int:
    cfg = getattr(getattr(model, "model", None), "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(getattr(cfg, "num_hidden_layers", 0) or 0)




# --------------------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------------------
def load_quantized(out_dir: str, *, device: str = "cpu", dtype=None, backend: str | None = None):
    """Load a GPTQ or AWQ checkpoint with ``transformers.AutoModelForCausalLM``; returns ``(model, info)``.

    ``backend`` is a gptqmodel backend name (``gptq_torch_aten``, ``gptq_torch_fused``, ``gptq_torch_int8``,
    ``gptq_torch``, ``awq_torch_aten``, ``torch_fused_awq``, ``torch_awq``, ...); ``None`` picks a working CPU
    kernel (``_pick_backend``). ``dtype`` defaults to bfloat16 (the CPU int4 kernels take bf16/fp16 only; fp16
    overflows on Gemma 3). ``info["kernel"]`` is the QuantLinear class that actually ran.
    """
    from .errors import ModelNotFoundError

    path = Path(out_dir)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelNotFoundError(f"{out_dir}: not a model folder (no config.json)")
    qcfg = json.loads(cfg_file.read_text(encoding="utf-8")).get("quantization_config") or {}
    method = str(qcfg.get("quant_method", "")).lower()
    if method not in ("gptq", "awq"):
        raise ModelNotFoundError(f"{out_dir}: not a GPTQ/AWQ checkpoint (quant_method={method or None!r})")

    _prepare_env(device)
    _import_gptqmodel()
    import torch
    from transformers import AutoModelForCausalLM, AwqConfig, GPTQConfig

    if dtype is None:
        dtype = torch.bfloat16
    elif isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if backend is None and str(device).startswith("cuda"):
        backend = TINYGEMM       # gptqmodel's own CUDA choice on Hopper (Machete) downloads CUTLASS at first use
    tinygemm = backend in (TINYGEMM, TRITON_GEMV)
    gemv = backend == TRITON_GEMV
    if tinygemm:                 # load with the plain torch kernel, then repack every layer (int4_tinygemm.py)
        backend, dtype = ("gptq_torch" if method == "gptq" else "torch_awq"), torch.bfloat16
    chosen = backend or _pick_backend(method, qcfg, path, device)
    kwargs: dict[str, Any] = {"dtype": dtype, "device_map": device}
    if chosen:
        bits = int(qcfg.get("bits", 4))
        # For a pre-quantized folder transformers keeps the saved config and only takes the loading attributes
        # (backend) from this one (quantizers/auto.py, merge_quantization_configs).
        kwargs["quantization_config"] = (GPTQConfig(bits=bits, backend=chosen) if method == "gptq"
                                         else AwqConfig(bits=bits, backend=chosen))
    t0 = time.perf_counter()
    with warnings.catch_warnings(), awq_loads_in(method, dtype if tinygemm else None):
        # expected when we pass a backend: "You passed `quantization_config` ... already has a `quantization_config`"
        warnings.filterwarnings("ignore", message="You passed `quantization_config`", category=UserWarning)
        model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    model.eval()
    qlayers = quantized_linears(model)
    skipped, gemv_skipped = [], []
    if tinygemm:
        from .int4_tinygemm import convert_model
        converted, skipped = convert_model(model, qlayers)
        qlayers = quantized_linears(model) + [(n, m) for n, m in model.named_modules()
                                              if type(m).__name__ == "TinyGemmInt4Linear"]
        chosen = TINYGEMM + (f" ({len(skipped)} layers left on {backend})" if skipped else "")
        if not skipped and next(model.parameters()).dtype != torch.bfloat16:
            # transformers casts AWQ models to float16 on CUDA for AWQ's own kernels; tinygemm runs bf16, and the
            # rest of the model follows (float16 overflowed on a random-weight Mistral-7B)
            model.to(torch.bfloat16)
        if gemv:                 # tuned here, once per layer shape and process: part of the load time
            from .int4_tinygemm import enable_gemv
            gemv_skipped = enable_gemv(model)
            chosen = TRITON_GEMV + chosen[len(TINYGEMM):]
    load_s = time.perf_counter() - t0
    kernels = sorted({type(m).__name__ for _, m in qlayers})
    if tinygemm and converted:
        from .int4_tinygemm import KERNEL, kernel_label
        kernels = [kernel_label([m for _, m in qlayers]) if k == KERNEL else k for k in kernels]
    sidecar = {}
    if (path / SIDECAR).is_file():
        sidecar = json.loads((path / SIDECAR).read_text(encoding="utf-8"))
    info = {
        "kernel": ",".join(kernels) if kernels else None,
        "backend": chosen or "auto",
        "method": method,
        "bits": qcfg.get("bits"),
        "group_size": qcfg.get("group_size"),
        "format": qcfg.get("format") or qcfg.get("version") or qcfg.get("checkpoint_format"),
        "quantized_layers": len(qlayers),
        "dtype": str(dtype).replace("torch.", ""),
        "device": device,
        "load_seconds": round(load_s, 2),
        "size_on_disk_bytes": sum(f.stat().st_size for f in path.glob("*.safetensors")),
        "quantization": sidecar,
        "tinygemm_skipped": skipped[:5],
        "gemv_skipped": gemv_skipped[:5],     # why layers keep tinygemm for one-row products (kernel triton-gemv)
    }
    drop_worker_references()
    if not qlayers:
        raise RuntimeError(f"{out_dir}: loaded, but no layer was replaced by a quantized kernel")
    return model, info


def drop_worker_references(timeout_s: float = 10.0) -> int:
    """Make gptqmodel's pool threads let go of their last task's arguments; returns how many workers ran a no-op.

    Each worker of gptqmodel's device thread pool waits for its next task with the previous task's ``fn, args,
    kwargs`` still bound in its loop (``gptqmodel/utils/threadx.py``, ``_DeviceWorker._run``), so after a load or a
    quantization those arguments (the model's layers) outlive an unload: a tiny model's 14 QuantLinear layers were
    still alive after ``unload_all`` and ``gc.collect``, and on a GPU that is a whole 4-bit model. One no-op task
    per worker rebinds them."""
    import sys
    module = sys.modules.get("gptqmodel")
    pool = getattr(module, "_DEVICE_THREAD_POOL", None) if module else None
    groups = getattr(pool, "_worker_groups", None)
    if not groups:
        return 0
    workers = {id(w): w for group in list(groups.values()) for w in list(group) if hasattr(w, "submit")}
    futures = []
    for worker in workers.values():
        try:
            futures.append(worker.submit(_no_task))
        except Exception:  # noqa: BLE001 - a stopped worker holds nothing to drop
            pass
    for fut in futures:
        try:
            fut.result(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - best effort: a busy worker lets go when its task ends
            pass
    return len(futures)


def _no_task() -> None:
    return None


TINYGEMM = "tinygemm"
TRITON_GEMV = "triton-gemv"   # tinygemm layers whose one-row products (batch-1 decode) run playground/int4_gemv.py
                              # (opt-in: kernel="triton-gemv"; not measured faster than tinygemm yet)


_AWQ_LOAD_LOCK = threading.Lock()


@contextlib.contextmanager
def awq_loads_in(method: str, dtype):
    """While an AWQ checkpoint loads, transformers' AWQ quantizer keeps ``dtype`` (None: leave it alone). On CUDA
    it turns bf16 into fp16 for AWQ's own CUDA kernels; the tinygemm path only runs gptqmodel's plain torch kernel
    to read the weights and then computes in bf16, so an fp16 load had to be cast back afterwards, tensor by tensor
    (the embedding: 1.07 GB in each dtype at GLM-6B size). (AWQ's load peak 1.9 GB above its weights, once blamed
    on this, came from the repack: see ``int4_tinygemm._awq_rows``.) The patch is on the class, so AWQ loads
    take turns (a lock) while it is in place."""
    if method != "awq":
        yield
        return
    from transformers.quantizers.quantizer_awq import AwqQuantizer
    with _AWQ_LOAD_LOCK:
        original = AwqQuantizer.update_dtype
        if dtype is not None:
            AwqQuantizer.update_dtype = lambda self, asked: dtype
        try:
            yield
        finally:
            AwqQuantizer.update_dtype = original


def quantized_linears(model) -> list[tuple[str, Any]]:
    """``(name, module)`` for every gptqmodel QuantLinear (GPTQ and AWQ kernels share ``BaseQuantLinear``)."""
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseQuantLinear)]


def _pick_backend(method: str, qcfg: dict, path: Path, device: str) -> Optional[str]:
    """A CPU kernel that runs this checkpoint; ``None`` lets gptqmodel choose (CUDA etc.).

    On CPU gptqmodel's AUTO choice is the ATen int4 kernel (``TorchAtenLinear`` / ``TorchAtenAwqLinear``), the
    fastest here, but it fails at the first forward when some ``in_features`` is not a multiple of
    ``group_size`` (see module docstring). For such ragged checkpoints (made elsewhere: ours avoid them) take
    the int8 kernel for GPTQ (works, ~20% slower, slow to load) and the plain torch kernel for AWQ.
    """
    if not str(device).startswith("cpu"):
        return None
    gs = int(qcfg.get("group_size", 128) or -1)
    in_features = _linear_in_features(path, method, int(qcfg.get("bits", 4))) if gs > 0 else set()
    ragged = any(k % gs for k in in_features) if gs > 0 else False
    if not ragged:
        return None
    return "gptq_torch_int8" if method == "gptq" else "torch_awq"
