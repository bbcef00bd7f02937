"""Where a GPTQ/AWQ load spends GPU memory, stage by stage (#13: AWQ's nvidia-smi peak sat 2.8 GB above its
allocator peak, GPTQ's 1.3 GB).

    python -m benchmarks.experiments.device.load_memory_stages --model random:glm-6b-class --variant awq

Prints one JSON line per stage: the allocator's allocated / reserved now and their peaks since the previous stage,
the driver's figure for this process (NVML), and at the end the allocator settings and segment count. A stage
whose NVML figure is far above its reserved peak spends memory outside PyTorch's allocator (CUDA modules,
library workspaces); one whose reserved peak is far above its allocated peak is fragmentation.
"""
from __future__ import annotations

import argparse
import json
import os

GB = 2 ** 30


def snapshot(stage: str) -> dict:
    import torch
    from benchmarks.experiments.reliability import nvml_process_bytes
    row = {"stage": stage}
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        nv = nvml_process_bytes()
        row.update(allocated_gb=torch.cuda.memory_allocated() / GB, reserved_gb=torch.cuda.memory_reserved() / GB,
                   peak_allocated_gb=torch.cuda.max_memory_allocated() / GB,
                   peak_reserved_gb=torch.cuda.max_memory_reserved() / GB, nvml_gb=(nv or 0) / GB)
        torch.cuda.reset_peak_memory_stats()
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    return row


def main() -> None:
    from playground import process_setup
    process_setup()      # the allocator/oneDNN settings, before torch starts CUDA
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="random:tiny-llama")
    ap.add_argument("--variant", default="awq")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--empty-cache-after-load", action="store_true",
                    help="torch.cuda.empty_cache() between from_pretrained and the tinygemm repack")
    args = ap.parse_args()

    from benchmarks.trackers import capture_nvml_baseline
    capture_nvml_baseline()
    import torch
    from benchmarks.random_weights import ensure_random_model
    import playground.gptq_awq as gptq_awq
    import playground.int4_tinygemm as tinygemm
    from playground.engine import GenerationParams, stream_reply
    from playground.manager import ModelManager
    from playground.variants import VariantOptions

    path = ensure_random_model(args.model.removeprefix("random:"), args.device)[0]
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    snapshot("start")
    gptq_awq._import_gptqmodel()
    snapshot("gptqmodel imported")

    convert = tinygemm.convert_model

    def convert_with_snapshots(model, layers):
        snapshot("from_pretrained done")
        if args.empty_cache_after_load and torch.cuda.is_available():
            torch.cuda.empty_cache()
            snapshot("empty_cache")
        out = convert(model, layers)
        snapshot("repacked for tinygemm")
        return out

    tinygemm.convert_model = convert_with_snapshots
    mm = ModelManager(device=args.device, budget_bytes=1 << 62)
    lm = mm.get(path, args.variant, options=VariantOptions(fast_decode="off"))
    snapshot("loaded")
    ids = torch.randint(10, 1000, (512,)).tolist()
    params = GenerationParams(max_new_tokens=32, min_new_tokens=32, greedy=True)
    for ev in stream_reply(lm, [], None, params, prompt_ids=ids):
        pass
    snapshot(f"reply ({ev.stats.new_tokens} tokens)")
    if torch.cuda.is_available():
        segs = torch.cuda.memory_snapshot()
        print(json.dumps({"env": {k: os.environ.get(k) for k in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF",
                                                                   "CUDA_MODULE_LOADING")},
                          "segments": len(segs), "expandable": sorted({bool(s.get("is_expandable")) for s in segs}),
                          "kernel": lm.stats.notes[:3] if hasattr(lm.stats, "notes") else None}), flush=True)


if __name__ == "__main__":
    main()
