"""One (model, variant) in its own process: ``python -m benchmarks.worker --spec S.json --events E.jsonl``.

Memory starts clean, and whatever happens (out of memory, a library crash) ends this process, not the sweep.
Every result goes to the events file as one JSON line, flushed at once, so the runner sees rows as they come and
keeps those written before a crash: ``{"event": "progress", ...}``, ``{"event": "row", "row": {...}}``,
``{"event": "done"}``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .config import PEER_MODES, RANDOM_PREFIX, TINYGEMM_MODE, UNFUSED_MODE, RunConfig, is_random
from .roofline import roofline_columns
from .results import LONG_TOKENS, SHORT_TOKENS, e2e_for, failed_rows, median, percentile
from .results import QUALITY_COLUMNS, RANDOM_QUALITY_NOTE
from .rows import Latency, Load, Memory, Quality, ResultRow, RowError, as_dict
from playground.placement import split_text, spread_option

GB = 1024 ** 3


class Events:
    def __init__(self, path: str):
        self.f = open(path, "a", encoding="utf-8")
        self.done: set[tuple] = set()

    def emit(self, obj: dict) -> None:
        self.f.write(json.dumps(obj, default=str) + "\n")
        self.f.flush()

    def progress(self, fraction: float, message: str) -> None:
        self.emit({"event": "progress", "fraction": round(float(fraction), 4), "message": str(message)})

    def row(self, row: ResultRow | dict) -> None:
        row = as_dict(row)
        self.done.add((row["batch_size"], row["prompt_tokens"], row["new_tokens"]))
        self.emit({"event": "row", "row": row})


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify(exc: BaseException) -> str:
    """ok/oom/error/unsupported for an exception, looking through its causes (the manager wraps OSErrors)."""
    from playground.errors import VariantUnsupportedError, is_out_of_memory, mentions_out_of_memory
    for e in _chain(exc):
        if is_out_of_memory(e) or mentions_out_of_memory(str(e)):
            return "oom"
    if isinstance(exc, VariantUnsupportedError):
        return "unsupported"
    return "error"


def describe(exc: BaseException) -> str:
    parts = []
    for e in _chain(exc):
        text = str(e).strip().splitlines()
        parts.append(f"{type(e).__name__}: {text[0] if text else ''}"[:300])
    return " <- ".join(parts[:3])


def preload(variant: str) -> None:
    """Import what loading will need, so that a memory cap set afterwards limits the model, not the libraries."""
    import importlib

    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    from playground.variants import get_variant
    for mod in get_variant(variant).requires:
        importlib.import_module(mod)


def apply_memory_cap(cap_gb: float | None, device: str) -> str | None:
    """Make allocations past the cap fail for real. CPU: RLIMIT_AS = current address space + cap.
    CUDA: the torch allocator's per-process fraction. Returns a note for the rows."""
    if not cap_gb:
        return None
    if device.startswith("cuda"):
        import torch
        idx = torch.device(device).index or 0
        total = torch.cuda.get_device_properties(idx).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * GB / total), idx)
        return f"CUDA allocator capped at {cap_gb:g} GB"
    import resource

    import psutil
    vms = psutil.Process().memory_info().vms
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = vms + int(cap_gb * GB)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return f"address space capped at {vms / GB:.2f} GB (after imports) + {cap_gb:g} GB"


@dataclass
class Run:
    ttft_s: float
    itl_s: list[float]
    total_s: float
    wall_s: float
    decode_tok_s: float
    mem: object = None
    extra: dict = field(default_factory=dict)


BENCH_PREFILL_CHUNK = 1 << 30      # tokens per prefill pass in benchmark rows: the whole prompt


def engine_run(lm, ids: list[int], n: int, seed: int, device: str, fast: bool = False,
               kv_cache: str = "default") -> Run:
    """Batch 1 through the engine the chat uses (``stream_reply``), inside a MemoryTracker. The prompt is read in
    one pass (``BENCH_PREFILL_CHUNK``), as transformers' ``generate`` and the committed runs read it: the chat's
    512-token chunks exist so that Stop acts within a long prompt, and would add a pass per chunk to a 16k TTFT."""
    from playground import engine
    from playground.engine import GenerationParams, stream_reply

    from .trackers import MemoryTracker
    params = GenerationParams(max_new_tokens=n, min_new_tokens=n, greedy=True, seed=seed,
                              decode="fast" if fast else "eager", kv_cache=kv_cache)
    chat_chunk, engine.PREFILL_CHUNK_TOKENS = engine.PREFILL_CHUNK_TOKENS, BENCH_PREFILL_CHUNK
    t0 = time.perf_counter()
    try:
        with MemoryTracker(device) as mt:
            for last in stream_reply(lm, [], None, params, prompt_ids=ids):
                pass
    finally:
        engine.PREFILL_CHUNK_TOKENS = chat_chunk
    wall = time.perf_counter() - t0
    s = last.stats
    if s.new_tokens != n:
        raise RuntimeError(f"the engine made {s.new_tokens} tokens instead of {n} ({'; '.join(s.notes)})")
    if fast and s.decode_mode == "eager":
        raise RuntimeError(f"asked for fast decoding but the engine decoded eagerly ({'; '.join(s.notes)})")
    return Run(s.ttft_s, list(s.itl_s), s.total_s, wall, s.decode_tok_s, mt.result,
               extra={"kv_cache_gb": s.kv_cache_gb})


class _StepStreamer:
    """A ``generate`` streamer that marks a LatencyTracker step per new token (its first ``put`` is the prompt)."""

    def __init__(self, lat):
        self.lat, self.prompt_seen = lat, False

    def put(self, value) -> None:
        if self.prompt_seen:
            self.lat.token()
        self.prompt_seen = True

    def end(self) -> None:
        pass


def peer_run(lm, prompts: list[list[int]], n: int, device: str) -> Run:
    """The peer row: transformers' ``generate(cache_implementation="static")`` (compiled by transformers itself on
    CUDA), greedy, exactly ``n`` new tokens, timed per token like ours."""
    import torch

    from .trackers import LatencyTracker, MemoryTracker
    ids = torch.tensor(prompts, device=lm.model.device)
    pad = lm.tokenizer.pad_token_id
    t0 = time.perf_counter()
    with MemoryTracker(device) as mt:
        with LatencyTracker(device, len(prompts)) as lat, torch.inference_mode():
            lm.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, cache_implementation="static", pad_token_id=pad,
                              streamer=_StepStreamer(lat))
    wall = time.perf_counter() - t0
    r = lat.result
    if len(r.itl_s) != n - 1:
        raise RuntimeError(f"transformers' generate made {len(r.itl_s) + 1} tokens instead of {n}")
    return Run(r.ttft_s, r.itl_s, r.total_s, wall, r.decode_tok_s, mt.result)


def batched_run(lm, prompts: list[list[int]], n: int, stop: list[int], device: str, fast: bool = False) -> Run:
    from .generation import batched_greedy
    from .trackers import LatencyTracker, MemoryTracker
    t0 = time.perf_counter()
    with MemoryTracker(device) as mt:
        with LatencyTracker(device, len(prompts)) as lat:
            batched_greedy(lm.model, prompts, n, stop, lat, fast=lm.fast if fast else None)
    wall = time.perf_counter() - t0
    r = lat.result
    return Run(r.ttft_s, r.itl_s, r.total_s, wall, r.decode_tok_s, mt.result)


def measure(lm, cfg: RunConfig, row: ResultRow, device: str, fast: bool = False, kv_cache: str = "default",
            peer: bool = False) -> None:
    """The latency and memory sections of ``row`` (and its per-repeat lists in ``raw``); ``peer``: measured through
    transformers' static-cache generate instead of this project's engine."""
    import torch

    from .generation import bare_fast_loop, bare_generate, make_prompt_ids, stop_token_ids
    bs, p, n = row.batch_size, row.prompt_tokens, row.new_tokens
    ctx = lm.context_length
    if p + n > ctx:
        row.set(status="unsupported", repeats=0,
                error=f"prompt {p} + new {n} tokens exceed the model's context of {ctx} tokens")
        return
    prompts = make_prompt_ids(lm.tokenizer, p, bs)
    stop = stop_token_ids(lm.model, lm.tokenizer)
    check = cfg.overhead_check and bs == 1 and kv_cache == "default" and not peer   # generate(): no quantized KV

    def one() -> Run:
        torch.manual_seed(cfg.seed)
        if peer:
            return peer_run(lm, prompts, n, device)
        if bs == 1:
            return engine_run(lm, prompts[0], n, cfg.seed, device, fast, kv_cache)
        if kv_cache != "default":
            raise ValueError(f"kv_cache={kv_cache} is measured at batch size 1 (through the engine) only")
        return batched_run(lm, prompts, n, stop, device, fast)

    def bare() -> float:   # the same method without the harness: eager generate, or the fast decoder's bare loop
        if fast:
            return bare_fast_loop(lm.fast, lm.model, prompts[0], n, stop)
        return bare_generate(lm.model, prompts[0], n, stop, lm.tokenizer.pad_token_id)

    for _ in range(cfg.warmup):
        one()
        if check:
            bare()
    runs, gen = [], []
    for _ in range(cfg.repeats):       # harness and bare generate interleaved: drift hits both alike
        runs.append(one())
        if check:
            gen.append(bare())
    ttft = [r.ttft_s * 1000 for r in runs]
    dec = [r.decode_tok_s for r in runs]
    itl = [x * 1000 for r in runs for x in r.itl_s]
    short = [e2e_for(r.ttft_s, r.itl_s, SHORT_TOKENS) for r in runs]
    long = [e2e_for(r.ttft_s, r.itl_s, LONG_TOKENS) for r in runs]

    def peak(attr):
        vals = [getattr(r.mem, attr) for r in runs if getattr(r.mem, attr) is not None]
        return max(vals) if vals else None
    yardstick = {}
    if gen:
        row.raw["overhead_yardstick"] = "fast decoder's bare loop" if fast else "model.generate (eager)"
        # least-disturbed run of each (min): on a shared machine the median mostly measures the neighbours
        yardstick = dict(generate_e2e_s=median(gen), harness_overhead=min(r.wall_s for r in runs) / min(gen) - 1.0)
        row.raw["harness_overhead_median"] = median([r.wall_s for r in runs]) / median(gen) - 1.0
    row.latency = Latency(
        ttft_ms=median(ttft), ttft_ms_p90=percentile(ttft, 90), decode_tok_s=median(dec),
        decode_tok_s_p90=percentile(dec, 90), itl_p50_ms=percentile(itl, 50), itl_p90_ms=percentile(itl, 90),
        e2e_s=median([r.total_s for r in runs]), e2e_short_s=median([s for s, _ in short]),
        e2e_long_s=median([s for s, _ in long]), **yardstick)
    row.memory = Memory(peak_rss_gb=peak("peak_rss_gb"), peak_gpu_mem_gb=peak("peak_gpu_mem_gb"),
                        peak_gpu_reserved_gb=peak("peak_gpu_reserved_gb"), peak_gpu_nvml_gb=peak("peak_gpu_nvml_gb"),
                        nvml_scope=runs[0].mem.nvml_scope, kv_cache_gb=runs[-1].extra.get("kv_cache_gb"))
    if runs[-1].mem.gpu_mem_by_device:      # placed over several GPUs: each one's allocator peak (GB)
        row.raw["peak_gpu_mem_by_device_gb"] = runs[-1].mem.gpu_mem_by_device
    row.set(repeats=len(runs), timed_with=("transformers generate(cache_implementation='static')" if peer else
                                           "engine.stream_reply" if bs == 1 else "batched greedy loop")
            + (" (static cache, compiled step)" if fast else ""))
    row.raw.update(
        ttft_ms=ttft, decode_tok_s=dec, e2e_s=[r.total_s for r in runs], wall_s=[r.wall_s for r in runs],
        itl_ms=[[x * 1000 for x in r.itl_s] for r in runs], peak_rss_gb=[r.mem.peak_rss_gb for r in runs],
        peak_gpu_mem_gb=[r.mem.peak_gpu_mem_gb for r in runs], generate_e2e_s=gen,
        e2e_short_extrapolated=short[0][1], e2e_long_extrapolated=long[0][1])


def quality_columns(lm, cfg: RunConfig, label: str, ev: Events) -> tuple[dict, dict]:
    """``evaluate_quality`` once for this (model, variant): (quality columns, checked as a ``rows.Quality``
    section, and extras for ``raw``). A failure (out of memory, NaN/inf from an overflow) becomes
    ``quality_error``, never a dead worker."""
    import math

    from .quality import evaluate_quality
    ev.progress(0.0, f"{label}: quality (perplexity en/zh, multiple-choice accuracy)")
    extra = {"options": dict(cfg.quality_options)}
    try:
        q = evaluate_quality(lm, **cfg.quality_options)
    except Exception as exc:  # noqa: BLE001 - the speed rows stand; quality says what went wrong
        traceback.print_exc()
        from playground.manager import release_memory
        release_memory()
        return asdict(Quality(quality_error=f"{classify(exc)}: {describe(exc)}")), extra
    problems = []
    for col, what in (("perplexity", "English perplexity"), ("perplexity_zh", "Chinese perplexity")):
        if q[col] is not None and not math.isfinite(q[col]):
            problems.append(f"{what} is {q[col]}")
            q[col] = None
    if q.get("accuracy_nonfinite"):
        problems.append(f"{q['accuracy_nonfinite']} of {q['quality_items']} multiple-choice items scored NaN/inf")
        q["accuracy"] = q["accuracy_raw"] = None
    extra.update(accuracy_raw=q.get("accuracy_raw"), accuracy_nonfinite=q.get("accuracy_nonfinite"),
                 mc_set=cfg.quality_options.get("mc_set", "arc_easy"))
    values = {c: q.get(c) for c in QUALITY_COLUMNS}
    if problems:
        values["quality_error"] = ("; ".join(problems) + ": the logits are not finite (NaN/inf, typically a "
                                   "float16 overflow), so this variant's quality cannot be measured")
    try:
        return asdict(Quality(**values)), extra
    except RowError as exc:     # a value the row cannot hold: said in the row, not a dead worker
        return asdict(Quality(quality_error=f"error: {exc}")), extra


def measure_mode(lm, cfg: RunConfig, row: ResultRow, device: str, mode: str, kv: str, ev: Events) -> None:
    """One row: this project's engine in decode ``mode`` (auto/fast/eager) with KV cache ``kv``, or the peer."""
    from playground.int4_tinygemm import use_gemv
    # the Triton GEMV (kernel triton-gemv) is on for every row but fast-tinygemm's: read when a decoder traces the
    # model, and by eager products
    gemv_layers = use_gemv(lm.model, mode != TINYGEMM_MODE)
    if mode in PEER_MODES:
        row.set(decode_mode=mode)
        if kv != "default":
            row.set(status="unsupported", repeats=0,
                    error="the transformers peer row is measured with the default KV cache only")
            return
        measure(lm, cfg, row, device, peer=True)
        return
    if mode == UNFUSED_MODE and kv == "default":
        from playground.fused_projections import fuse_projections
        if not fuse_projections(lm.model).groups:     # quantized layers: the fast rows are already unfused
            row.set(decode_mode=mode, status="unsupported", repeats=0,
                    error="fast-unfused: no plain q/k/v or gate/up Linears to fuse here (quantized layers), so "
                          "the fast row is already this measurement")
            return
    if mode == TINYGEMM_MODE and kv == "default":
        if not gemv_layers:
            row.set(decode_mode=mode, status="unsupported", repeats=0,
                    error=f"fast-tinygemm: no layer here runs the Triton GEMV (kernel {lm.kernel}), so the fast "
                          f"row is already this measurement")
            return
    fast = use_fast(lm, mode if kv == "default" else "eager", device, row, ev)
    if kv != "default" and mode != "eager" and (mode == "fast" or device.startswith("cuda")):
        row.raw["notes"].append(f"kv_cache={kv}: a quantized KV cache decodes eagerly (the fast "
                                f"decoder's static cache cannot hold it)")
    measure(lm, cfg, row, device, fast, kv)


def measure_bandwidth(device: str) -> float | None:
    """The device's read bandwidth for the roofline columns, measured once per worker before the model loads and
    before any memory cap: its probe buffer (0.5 GB on CPU, 4 GB on CUDA) must neither count against the cap nor
    sit beside the weights. None (and no roofline columns) if even that does not fit."""
    from playground.manager import release_memory

    from .roofline import read_bandwidth_gb_s
    try:
        return read_bandwidth_gb_s(device)
    except (MemoryError, RuntimeError) as exc:
        print(f"benchmarks.worker: read bandwidth not measured: {exc}", file=sys.stderr)
        return None
    finally:
        release_memory()


def use_fast(lm, mode: str, device: str, row: ResultRow, ev: Events) -> bool:
    """Whether this row decodes through the fast decoder (starting it, timed, on first use: its replies then get
    their static cache from ``FastDecoder.session`` inside the engine). ``fast-unfused`` rows use a second decoder
    built with ``fuse=False``, ``fast-tinygemm`` rows one traced with the Triton GEMV off (tinygemm for every
    product); each row puts its own decoder in ``lm.fast`` (all kept in ``lm.bench_decoders``)."""
    from playground.fast_decode import enable_fast_decode
    from playground.variants import fast_decode_by_default
    fast = mode in ("fast", UNFUSED_MODE, TINYGEMM_MODE) or (mode == "auto" and fast_decode_by_default(lm.variant,
                                                                                                    device))
    if fast and lm.device == "auto":       # placed over several devices (--max-memory)
        if mode != "auto":
            raise RuntimeError("the fast decoder runs a model on one GPU; this one is placed over several devices "
                               "(--max-memory): use --decode-modes eager or auto")
        fast = False
    if not fast:
        row.set(decode_mode="eager")
        return False
    fuse = mode != UNFUSED_MODE
    if not fuse:    # the model gets its final modules first (the switch stays off in this decoder): the two
        from playground.fused_projections import fuse_projections     # decoders then trace the same model
        fuse_projections(lm.model)
    key = mode if mode in (UNFUSED_MODE, TINYGEMM_MODE) else "fast"
    decoders = lm.__dict__.setdefault("bench_decoders", {})        # key -> FastDecoder, for this worker's rows
    if lm.fast is not None and lm.fast not in decoders.values():
        decoders["fast"] = lm.fast                                 # started before the rows (the default: fused)
    lm.fast = decoders.get(key)
    if lm.fast is None:
        what = {UNFUSED_MODE: " (projections unfused)", TINYGEMM_MODE: " (tinygemm, no GEMV)"}.get(key, "")
        ev.progress(0.0, f"{lm.label}: compiling the decode step" + what)
        if enable_fast_decode(lm, fuse=fuse) is None:
            raise RuntimeError("fast decode could not start: " + lm.stats.notes[-1])
        decoders[key] = lm.fast
    row.set(decode_mode=lm.fast.info.mode, warmup_s=lm.fast.info.warmup_s)
    row.raw["decode_requested"] = mode
    row.raw["compile_cache"] = lm.fast.info.compile_cache      # "hit": an earlier load's kernels were reused
    return True


def run(cfg: RunConfig, model: str, variant: str, device: str, ev: Events) -> None:
    from playground.manager import ModelManager, release_memory
    from playground.variants import VariantOptions

    from .trackers import MemoryTracker
    from playground.progress import scaled
    build_s, notes, load_progress = 0.0, [], ev.progress
    try:
        path = model
        if is_random(model):
            from .random_weights import ensure_random_model, wants_skeleton
            arch = model[len(RANDOM_PREFIX):]
            path, build_s = ensure_random_model(arch, device, scaled(ev.progress, 0, 0.3),
                                                skeleton=wants_skeleton(arch, variant))
            load_progress = scaled(ev.progress, 0.3, 0.99)
            notes.append("random weights: speed and memory are real, answers are noise")
            if cfg.quality:
                notes.append(RANDOM_QUALITY_NOTE)
        if cfg.memory_cap_gb:
            preload(variant)
        bandwidth = measure_bandwidth(device)
        note = apply_memory_cap(cfg.memory_cap_gb, device)
        if note:
            notes.append(note)
        spread, caps = spread_option(cfg.max_memory)     # --max-memory: device_map="auto" under these caps
        manager = ModelManager(device="auto" if spread else device, budget_bytes=1 << 62, max_memory=caps)
        load_progress(0.0, f"loading {model} [{variant}] on {device}")
        with MemoryTracker(device) as load_mem:
            # fast decoding is switched on below, by the first row that uses it, so load_s leaves out its warm-up
            options = VariantOptions(**{**cfg.variant_options, "fast_decode": "off"})
            lm = manager.get(path, variant, options=options, progress=scaled(load_progress, 0, 0.99))
    except Exception as exc:  # noqa: BLE001 - every failure becomes rows
        traceback.print_exc()      # into the worker's log (results folder logs/)
        for row in failed_rows(cfg, model, variant, device, classify(exc), describe(exc)):
            row["raw"]["notes"] = notes
            ev.row(row)
        return
    s = lm.stats
    lm_mem = load_mem.result
    load = Load(load_read_s=s.load_s, load_quantize_s=s.quantize_s, convert_s=s.convert_s + build_s,
                load_s=s.load_s + s.quantize_s + s.convert_s + build_s, weights_gb=s.weights_bytes / GB,
                load_peak_mem_gb=lm_mem.peak_gpu_mem_gb if lm_mem.peak_gpu_mem_gb is not None else lm_mem.peak_rss_gb,
                kernel=lm.kernel)
    notes += s.notes
    if len(s.weights_by_device) > 1:      # placed over several devices (--max-memory): where the weights are
        notes.append(f"weights placed over {split_text(s.weights_by_device)}")
    ev.progress(1.0, f"loaded {model} [{variant}] in {s.load_s:.1f}s")
    pending = [] if cfg.quality and not is_random(model) else None   # rows wait for the quality columns
    from .roofline import decode_bytes
    roof = {"bandwidth": bandwidth, "bytes": decode_bytes(lm.model, lm.stats.weights_bytes)}
    for bs, p, n in cfg.combos():
        for mode, kv in itertools.product(cfg.decode_modes, cfg.kv_cache):
            row = ResultRow.new(model, variant, device, bs, p, n, kv_cache=kv, load=replace(load))
            row.raw["notes"] = list(notes)
            if len(s.weights_by_device) > 1:
                row.raw["weights_by_device_gb"] = {d: b / GB for d, b in s.weights_by_device.items()}
            ev.progress(0.0, f"{model} [{variant}] bs={bs} prompt={p} new={n} decode={mode} kv={kv}")
            try:
                # decimal GB, as the bandwidth: roofline tok/s = read_bandwidth_gb_s / decode_bytes_gb (rows
                # before 2026-12-03 wrote GiB here)
                row.set(read_bandwidth_gb_s=roof["bandwidth"], decode_bytes_gb=roof["bytes"] / 1e9)
                measure_mode(lm, cfg, row, device, mode, kv, ev)
                if row.status == "ok":
                    row.set(**roofline_columns(row.latency.decode_tok_s, bs, roof["bandwidth"], roof["bytes"]))
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                row.fail(classify(exc), describe(exc))
                release_memory()
            if pending is None:
                ev.row(row)
            else:
                pending.append(row)
    if pending:    # quality after speed: its activations must not raise the speed rows' peak memory
        values, extra = quality_columns(lm, cfg, f"{model} [{variant}]", ev)
        for row in pending:
            row.set(**values)
            row.raw["quality"] = extra
            ev.row(row)


def main(argv: list[str] | None = None) -> int:
    from playground import process_setup
    process_setup()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.worker")
    ap.add_argument("--spec", required=True)
    ap.add_argument("--events", required=True)
    args = ap.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    cfg = RunConfig.from_dict(spec["config"])
    ev = Events(args.events)
    model, variant, device = spec["model"], spec["variant"], spec["device"]
    if device.startswith("cuda"):
        from .trackers import capture_nvml_baseline
        capture_nvml_baseline()
    try:
        run(cfg, model, variant, device, ev)
    except BaseException as exc:  # noqa: BLE001 - last resort: the rows not written yet say what happened
        traceback.print_exc()
        for row in failed_rows(cfg, model, variant, device, classify(exc), describe(exc), done=ev.done):
            ev.row(row)
        ev.emit({"event": "done"})
        return 1
    ev.emit({"event": "done"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
