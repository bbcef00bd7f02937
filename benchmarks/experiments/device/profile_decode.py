"""Where a fast decode step's time goes: a torch.profiler summary of N compiled decode steps, per step.

    python -m benchmarks.experiments.device.profile_decode --model random:mistral-7b --device cuda \\
        --prompt-tokens 512 --steps 128 --out results/gpu-h200-mistral-7b-decode-profile

Loads the model (bf16 by default) through the playground's manager, starts the fast decoder (static cache, compiled
step, CUDA graphs on a GPU; fused q/k/v and gate/up projections unless ``--unfused``), prefills a prompt, warms up,
then profiles ``--steps`` decode steps (the step and the greedy choice, as the benchmark's fast loop runs them).
Writes two small files, not a trace: ``decode_profile[-unfused].json`` (top kernels by device time per step, time
per category, wall time per step, the roofline of the step) and the same as a table in ``decode_profile*.txt``.
On a CPU (``--device cpu``: a dry run of the GPU stage) the "kernels" are the CPU ops by self time.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

CATEGORIES = (   # first match wins; names as cuBLAS / CUTLASS / inductor / flash attention kernels show them.
    # inductor's own kernels first: their names list the ops they fused ("..._bmm_cat_..."), not what they do
    ("matrix products", r"^triton_tem_"),
    ("fused elementwise (inductor)", r"^triton_poi_"),
    ("reductions (split-K, norms, argmax)", r"^triton_(red|per)_"),
    ("matrix products", r"nvjet|gemv|gemm|cutlass|sm\d+_xmma|ampere_|hopper|cublas|splitk|mm_|addmm|aten::mm|linear"),
    ("attention", r"flash|fmha|attention|sdpa|softmax|efficient_attention"),
    ("reductions (split-K, norms, argmax)", r"reduce|reduction|argmax|red_|per_row|_red\b"),
    ("copies", r"memcpy|memset|copy_|index_put|scatter|cat\b"),
    ("fused elementwise (inductor)", r"triton_|poi_|fused_|elementwise|vectorized"),
)


def category(name: str) -> str:
    low = name.lower()
    for label, pattern in CATEGORIES:
        if re.search(pattern, low):
            return label
    return "other"


def _device_time_us(evt, cuda: bool) -> float:
    if not cuda:
        return float(evt.self_cpu_time_total)
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, attr):
            return float(getattr(evt, attr))
    return 0.0


def summarize(prof, steps: int, cuda: bool, top: int = 25) -> dict:
    """Per step: each kernel's device time and calls, the categories, the total."""
    import torch
    kernels = []
    for evt in prof.key_averages():
        if cuda and evt.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if not cuda and (evt.key.startswith("ProfilerStep") or evt.key.startswith("Torch-Compiled Region")):
            continue
        us = _device_time_us(evt, cuda)
        if us > 0:
            kernels.append({"name": evt.key, "us_per_step": us / steps, "calls_per_step": evt.count / steps,
                            "category": category(evt.key)})
    kernels.sort(key=lambda k: -k["us_per_step"])
    total = sum(k["us_per_step"] for k in kernels)
    cats: dict[str, float] = {}
    for k in kernels:
        cats[k["category"]] = cats.get(k["category"], 0.0) + k["us_per_step"]
    for k in kernels:
        k["share"] = k["us_per_step"] / total if total else None
    return {"device_us_per_step": total, "categories_us_per_step": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
            "top_kernels": kernels[:top], "kernels_seen": len(kernels)}


def profile(model: str, variant: str, device: str, prompt_tokens: int, steps: int, fuse: bool) -> dict:
    import torch

    from benchmarks.generation import make_prompt_ids
    from benchmarks.roofline import decode_bytes, read_bandwidth_gb_s
    from playground.fast_decode import enable_fast_decode
    from playground.manager import ModelManager, release_memory
    from playground.variants import VariantOptions
    path = model
    if model.startswith("random:"):
        from benchmarks.random_weights import ensure_random_model
        path, _ = ensure_random_model(model[len("random:"):], device)
    cuda = device.startswith("cuda")
    bandwidth = read_bandwidth_gb_s(device)
    release_memory()
    mm = ModelManager(device=device, budget_bytes=1 << 62)
    lm = mm.get(path, variant, options=VariantOptions(fast_decode="off"))
    t0 = time.perf_counter()
    fast = enable_fast_decode(lm, fuse=fuse)
    if fast is None:
        raise RuntimeError("fast decode could not start: " + lm.stats.notes[-1])
    warmup_s = time.perf_counter() - t0
    prompt = make_prompt_ids(lm.tokenizer, prompt_tokens, 1)[0]

    def sync():
        if cuda:
            torch.cuda.synchronize()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with fast.session(prompt_tokens + steps + 16, 1, lm.context_length) as session, torch.no_grad():
        if not session.fast:
            raise RuntimeError(f"no static cache for this length: {session.note}")
        nxt = session.prefill(torch.tensor([prompt], device=lm.model.device)).argmax(-1, keepdim=True)
        for _ in range(8):                     # compile (if this bucket is new), record the graph, replay
            nxt = session.step(nxt).argmax(-1, keepdim=True)
        sync()
        with torch.profiler.profile(activities=activities) as prof:
            t1 = time.perf_counter()
            for _ in range(steps):
                nxt = session.step(nxt).argmax(-1, keepdim=True)
            sync()
            wall = time.perf_counter() - t1
    out = summarize(prof, steps, cuda)
    step_bytes = decode_bytes(lm.model, lm.stats.weights_bytes)
    ideal_us = step_bytes / (bandwidth * 1e9) * 1e6 if bandwidth else None
    out.update(model=model, variant=variant, device=device, mode=fast.info.mode, kernel=lm.kernel,
               prompt_tokens=prompt_tokens, steps=steps, warmup_s=round(warmup_s, 2),
               wall_us_per_step=wall / steps * 1e6, tok_s=steps / wall,
               host_and_gaps_us_per_step=wall / steps * 1e6 - out["device_us_per_step"] if cuda else None,
               read_bandwidth_gb_s=bandwidth, decode_bytes_gb=step_bytes / 1e9, roofline_us_per_step=ideal_us,
               roofline_fraction=(ideal_us / (wall / steps * 1e6)) if ideal_us else None,
               torch=torch.__version__, gpu=torch.cuda.get_device_name() if cuda else None)
    return out          # the process ends here: no unload (its held-by search would only cost time)


def as_text(r: dict) -> str:
    unit = "device" if r["device"].startswith("cuda") else "CPU (self time of ops)"
    lines = [f"{r['model']} [{r['variant']}] on {r['device']} ({r.get('gpu') or 'no GPU'}), torch {r['torch']}",
             f"decoder: {r['mode']}; kernel {r['kernel'] or '-'}; warm-up {r['warmup_s']} s; prompt "
             f"{r['prompt_tokens']} tokens, {r['steps']} steps profiled",
             f"wall {r['wall_us_per_step']:.0f} us/step ({r['tok_s']:.1f} tok/s); {unit} busy "
             f"{r['device_us_per_step']:.0f} us/step"
             + (f"; host and gaps {r['host_and_gaps_us_per_step']:.0f} us/step"
                if r.get("host_and_gaps_us_per_step") is not None else ""),
             f"roofline: {r['decode_bytes_gb']:.3f} GB a step at {r['read_bandwidth_gb_s']:.0f} GB/s = "
             f"{r['roofline_us_per_step']:.0f} us/step; this step runs at {r['roofline_fraction']:.2f} of it"
             if r.get("roofline_us_per_step") else "roofline: bandwidth not measured", "",
             "by category (us per step):"]
    lines += [f"  {v:9.1f}  {k}" for k, v in r["categories_us_per_step"].items()]
    lines += ["", f"top {len(r['top_kernels'])} of {r['kernels_seen']} (us per step, calls per step, share):"]
    lines += [f"  {k['us_per_step']:9.1f}  {k['calls_per_step']:6.1f}  {k['share'] * 100:5.1f}%  "
              f"{k['name'][:110]}" for k in r["top_kernels"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from playground import process_setup
    process_setup()
    ap = argparse.ArgumentParser(prog="python -m benchmarks.experiments.device.profile_decode")
    ap.add_argument("--model", default="random:mistral-7b")
    ap.add_argument("--variant", default="bf16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--unfused", action="store_true", help="the fast decoder without fused projections")
    ap.add_argument("--out", required=True, help="folder for decode_profile[-unfused].json/.txt")
    args = ap.parse_args(argv)
    from benchmarks.results import atomic_write
    r = profile(args.model, args.variant, args.device, args.prompt_tokens, args.steps, fuse=not args.unfused)
    stem = Path(args.out) / ("decode_profile" + ("-unfused" if args.unfused else ""))
    atomic_write(stem.with_suffix(".json"), json.dumps(r, indent=1))
    text = as_text(r)
    atomic_write(stem.with_suffix(".txt"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
