"""The memory-bandwidth roofline of decoding: at small batch sizes every new token reads all the weights once, so
``tokens/s ≤ batch × read bandwidth / bytes read per step``. Both numbers are measured in the run itself."""
from __future__ import annotations

import time

GB = 1e9


def read_bandwidth_gb_s(device: str, size_gb: float | None = None, repeats: int = 10) -> float:
    """Best read bandwidth (GB/s, 1e9) of a sum over a buffer far larger than the caches."""
    import torch
    cuda = str(device).startswith("cuda")
    size_gb = size_gb or (4.0 if cuda else 0.5)
    x = torch.ones(int(size_gb * GB / 4), dtype=torch.float32, device=device)
    best = float("inf")
    for i in range(repeats + 2):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            x.sum()
            end.record()
            end.synchronize()
            t = start.elapsed_time(end) / 1000
        else:
            t0 = time.perf_counter()
            x.sum()
            t = time.perf_counter() - t0
        if i >= 2:                      # two warm-up passes
            best = min(best, t)
    del x
    return x_bytes(size_gb) / best / GB


def x_bytes(size_gb: float) -> float:
    return int(size_gb * GB / 4) * 4


def decode_bytes(model, weights_bytes: int) -> int:
    """Bytes read per decode step: all weights except an input embedding table that is not tied to the output
    projection (only one of its rows is read per token). The KV cache is left out (small at these lengths)."""
    try:
        emb = model.get_input_embeddings().weight
        out = model.get_output_embeddings()
        tied = out is not None and out.weight.data_ptr() == emb.data_ptr()
        if not tied:
            return max(1, weights_bytes - emb.numel() * emb.element_size())
    except Exception:  # noqa: BLE001 - exotic models: count everything
        pass
    return weights_bytes


def roofline_columns(decode_tok_s: float | None, batch_size: int, bandwidth_gb_s: float | None,
                     bytes_per_step: int | None) -> dict:
    if not bandwidth_gb_s or not bytes_per_step:
        return {}
    roof = batch_size * bandwidth_gb_s * GB / bytes_per_step
    return {"roofline_tok_s": roof, "roofline_fraction": (decode_tok_s / roof) if decode_tok_s else None}
