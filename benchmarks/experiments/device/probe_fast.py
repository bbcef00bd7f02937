"""Where does the fast decoder's time go on a GPU? Compile time, recompiles, decode speed vs eager and vs
transformers' static-cache generate, on a random-weight Mistral-7B built in GPU memory (nothing saved)."""
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.getcwd())
from playground.fast_decode import FastDecoder  # noqa: E402

T0 = time.perf_counter()


def log(*a):
    print(f"[{time.perf_counter() - T0:7.1f}s]", *a, flush=True)


def main(regional: bool, layers: int | None):
    from playground import process_setup
    process_setup()      # the allocator/oneDNN settings, before torch starts CUDA
    from transformers import AutoConfig, AutoModelForCausalLM
    arch = json.load(open("benchmarks/architectures/mistral-7b.json"))["config"]
    arch = dict(arch)
    mt = arch.pop("model_type")
    if layers:
        arch["num_hidden_layers"] = layers
    cfg = AutoConfig.for_model(mt, **arch)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()
    log("built", sum(p.numel() for p in model.parameters()) / 1e9, "B params")
    ids = torch.randint(100, 30000, (1, 512), device="cuda")
    N = 256

    def eager():
        with torch.inference_mode():
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(N - 1):
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                int(nxt)
            return (N - 1) / (time.perf_counter() - t)
    log("eager tok/s", eager(), eager())
    fd = FastDecoder(model, "cuda")
    t = time.perf_counter()
    fd.warm_up(needed=512 + N)
    log("warm-up s", time.perf_counter() - t, fd.info)

    def fast():
        cache = fd.acquire(1, 512 + N)
        with torch.no_grad():
            nxt = fd.prefill(ids, cache).argmax(-1, keepdim=True)
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(N - 1):
                nxt = fd.step(nxt, cache).argmax(-1, keepdim=True)
                int(nxt)
            r = (N - 1) / (time.perf_counter() - t)
        fd.release(cache)
        return r
    log("fast tok/s", fast(), fast(), fast(), "compiles", fd.compiles)
    wb = sum(p.numel() * p.element_size() for p in model.parameters()) - model.get_input_embeddings().weight.numel() * 2
    x = torch.ones(int(4e9 / 4), device="cuda")
    best = 1e9
    for _ in range(8):
        s, e = torch.cuda.Event(True), torch.cuda.Event(True)
        s.record()
        x.sum()
        e.record()
        e.synchronize()
        best = min(best, s.elapsed_time(e) / 1000)
    bw = 4e9 / best
    log("bandwidth GB/s", bw / 1e9, "roofline tok/s", bw / wb)
    try:
        from torch._dynamo.utils import compile_times
        log(compile_times(repr="str", aggregate=True)[:3000])
    except Exception as exc:  # noqa: BLE001
        log("compile_times", exc)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as prof:
        fast()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)


def awq_check():
    """Random AWQ checkpoint of a tiny Llama on CUDA: which kernel gives non-finite logits?"""
    from benchmarks.random_weights import ensure_random_model
    from playground.gptq_awq import quantized_linears
    from playground.manager import ModelManager
    from playground.variants import VariantOptions
    path, _ = ensure_random_model("tiny-llama", "cuda")
    mm = ModelManager(device="cuda")
    ids = torch.tensor([[1, 5, 9, 13]], device="cuda")
    for method in ("awq", "gptq"):
        for kernel in ("torch_awq" if method == "awq" else "gptq_torch", "gemm_triton" if method == "awq" else
                       "gptq_triton", "tinygemm"):
            try:
                lm = mm.get(path, method, options=VariantOptions(kernel=kernel))
                with torch.no_grad():
                    logits = lm.model(ids).logits
                    ql = quantized_linears(lm.model)
                    w = ql[0][1](torch.eye(ql[0][1].in_features, dtype=torch.bfloat16, device="cuda")) if ql else None
                log(method, kernel, lm.kernel, "finite logits", bool(torch.isfinite(logits).all()),
                    "finite W", None if w is None else bool(torch.isfinite(w).all()),
                    "scales", None if not ql else (ql[0][1].scales.dtype, float(ql[0][1].scales.float().abs().max())))
            except Exception as exc:  # noqa: BLE001
                log(method, kernel, "failed:", type(exc).__name__, str(exc)[:300])
            mm.unload_all()


if __name__ == "__main__":
    if "--awq" in sys.argv:
        awq_check()
    else:
        main(regional="--regional" in sys.argv, layers=int(os.environ.get("LAYERS", "0")) or None)
