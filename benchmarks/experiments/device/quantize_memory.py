"""Peak RAM (and GPU memory) while calibrating real GPTQ and AWQ checkpoints of a shape (issue #15).

The Baichuan-13B guide says quantizing on the CPU needs 36.1 GB of RAM. This measures what gptqmodel needs here to
make a GPTQ and an AWQ checkpoint of a random-weight shape (real calibration on repo text, layer by layer on
``--device``; the bf16 model itself waits in RAM), one method per process so each peak starts clean:

    python -m benchmarks.experiments.device.quantize_memory --model random:mistral-7b --methods gptq,awq \
        --device cuda --samples 32 --time-limit 240 --out results/NAME/quantize_memory.json

A method that runs out of its time limit, of memory, or fails is a row with its status and error, not a gap.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path


def _one(model: str, method: str, device: str, samples: int, queue) -> None:
    from playground import process_setup
    process_setup()
    from benchmarks.random_weights import ensure_random_model
    from benchmarks.trackers import MemoryTracker
    from playground import gptq_awq

    row = {"model": model, "method": method, "device": device, "calibration_samples": samples}
    try:
        t0 = time.perf_counter()
        path, _ = ensure_random_model(model.removeprefix("random:"), device)
        row["build_s"] = round(time.perf_counter() - t0, 1)
        quantize = gptq_awq.quantize_gptq if method == "gptq" else gptq_awq.quantize_awq
        with tempfile.TemporaryDirectory(prefix=f"qmem-{method}-", dir=Path(path).parent) as tmp, \
                MemoryTracker(device) as mem:
            t0 = time.perf_counter()
            quantize(path, str(Path(tmp) / "out"), bits=4, group_size=128,
                     calibration=gptq_awq.calibration_texts(samples), device=device,
                     progress=lambda f, m: print(f"  {method} {f:4.0%} {m}", flush=True))
            row["quantize_s"] = round(time.perf_counter() - t0, 1)
        m = mem.result
        row.update(status="ok", peak_rss_gb=m.peak_rss_gb, peak_gpu_mem_gb=m.peak_gpu_mem_gb,
                   peak_gpu_nvml_gb=m.peak_gpu_nvml_gb)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row
        from playground.errors import mentions_out_of_memory
        row.update(status="oom" if mentions_out_of_memory(str(exc)) else "error",
                   error=f"{type(exc).__name__}: {exc}"[:500])
    queue.put(row)


def main(argv: list[str] | None = None) -> int:
    from playground import process_setup
    process_setup()      # the allocator/oneDNN settings, before torch starts CUDA
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random:mistral-7b")
    ap.add_argument("--methods", default="gptq,awq")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--time-limit", type=float, default=240.0, help="seconds per method")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    from benchmarks.environment import collect_environment
    from benchmarks.results import atomic_write

    rows = []
    ctx = mp.get_context("spawn")
    for method in args.methods.split(","):
        queue = ctx.Queue()
        proc = ctx.Process(target=_one, args=(args.model, method, args.device, args.samples, queue))
        t0 = time.perf_counter()
        proc.start()
        proc.join(args.time_limit)
        if proc.is_alive():
            proc.kill()
            proc.join()
            rows.append({"model": args.model, "method": method, "status": "timeout",
                         "error": f"not done after {args.time_limit:.0f} s (the command's share of the limit)"})
        else:
            rows.append(queue.get() if not queue.empty() else
                        {"model": args.model, "method": method, "status": "error",
                         "error": f"worker exited with code {proc.exitcode} and no row"})
        rows[-1]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(rows[-1]), flush=True)
    atomic_write(Path(args.out), json.dumps({"rows": rows, "environment": collect_environment(args.device),
                                             "command": " ".join(sys.argv)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
