"""GPTQ/AWQ layers repacked for torch's own int4 matmul ("tinygemm", ``aten::_weight_int4pack_mm``).

gptqmodel's fast CUDA kernels need a long first build (Marlin) or fetch sources from the internet (Machete); its
Triton and torch kernels dequantize on every call. torch ships an int4 weight-only matmul for bf16 activations
(``_weight_int4pack_mm`` on CUDA, ``_weight_int4pack_mm_for_cpu`` on CPU): no build, and it traces into
``torch.compile`` graphs and CUDA graphs like any aten op — the kernel gpt-fast and torchao use for int4.

Both GPTQ and AWQ store ``w = (q - z) · s`` per group of ``group_size`` input channels. tinygemm computes
``w = (q' - 8) · s + zero``. The conversion reads the layer's effective weight by running it on an identity
matrix (so it does not depend on each format's packing; AWQ layers, whose torch kernel unpacks the whole weight
into int32 temporaries on every call, are read a slice of rows at a time with gptqmodel's own AWQ dequantizer),
divides by the layer's own scales to get the integer codes ``c = q - z``, shifts each group to
``q' = c - min(c)`` (still 0..15) and sets ``zero = (8 + min(c)) · s``.
It checks the repacked layer reproduces the original weight before swapping it in.

tinygemm is a small-batch kernel (its prefill of 512 tokens was 10-17x slower than bf16's on an H200). A product
of more than ``DEQUANTIZE_ABOVE_ROWS`` rows (tokens x batch: the prefill, large batches) instead dequantizes the
layer's weight into a bf16 temporary, one layer at a time, and runs a regular matmul (``playground.int4_unpack``
reads the codes back out of the packed tensor; nothing else is stored). Decode steps keep tinygemm.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GROUP_SIZES = (32, 64, 128, 256)
DEQUANTIZE_ABOVE_ROWS = 16   # products of more rows than this dequantize to bf16 and matmul; fewer use tinygemm
KERNEL = "TinyGemmInt4Linear"
PATHS = f"tinygemm at <= {DEQUANTIZE_ABOVE_ROWS} rows; dequantize + bf16 matmul above"
GEMV_PATH = "Triton GEMV at 1 row"


class TinyGemmInt4Linear(nn.Module):
    """y = x W^T (+ b) with W held as tinygemm int4 tiles; activations run in bf16. ``layout`` (from
    ``int4_unpack.detect_layout``) lets a product of many rows dequantize W for a bf16 matmul; None: tinygemm only."""

    def __init__(self, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int, in_features: int,
                 out_features: int, bias: torch.Tensor | None, layout: str | None = None):
        super().__init__()
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.bias = None if bias is None else nn.Parameter(bias.to(torch.bfloat16), requires_grad=False)
        self.group_size, self.in_features, self.out_features = group_size, in_features, out_features
        self.layout = layout
        self.gemv: tuple[int, int, int] | None = None    # the Triton GEMV's tuned config (``enable_gemv``), or None
        self.gemv_tuned: tuple[int, int, int] | None = None   # what ``use_gemv`` switches back on

    def uses_dequantize(self, rows: int) -> bool:
        """Whether a product of ``rows`` rows (tokens x batch) dequantizes and matmuls instead of tinygemm."""
        return self.layout is not None and rows > DEQUANTIZE_ABOVE_ROWS

    def dequantized_weight(self) -> torch.Tensor:
        """W as bf16 [out, in], made now (a temporary: nothing is kept)."""
        from .int4_unpack import dequantize
        return dequantize(self.packed, self.scales_and_zeros, self.layout, self.out_features, self.in_features,
                          self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1] + (self.out_features,)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if self.uses_dequantize(x2.shape[0]):
            return F.linear(x2, self.dequantized_weight(), self.bias).reshape(shape).to(x.dtype)
        if self.gemv is not None and x2.shape[0] == 1:     # set on CUDA layers only (``enable_gemv``), and by tests
            from .int4_gemv import gemv
            y = gemv(x2, self.packed, self.scales_and_zeros, self.group_size, self.gemv)
        elif x2.is_cuda:
            y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group_size, self.scales_and_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group_size, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(shape).to(x.dtype)

    def extra_repr(self) -> str:
        paths = PATHS if self.layout else "tinygemm"
        if self.gemv is not None:
            paths = f"{GEMV_PATH}, {paths}"
        return f"in={self.in_features}, out={self.out_features}, group_size={self.group_size}, kernel={paths}"


def _inner_k_tiles(k: int) -> int | None:
    for t in (8, 4, 2):
        if k % (t * 16) == 0:
            return t
    return None


def unsupported_reason(layer) -> str | None:
    k, n, g = int(layer.in_features), int(layer.out_features), int(getattr(layer, "group_size", -1))
    if getattr(layer, "bits", 4) != 4:
        return f"{layer.bits}-bit weights (tinygemm is 4-bit only)"
    if g not in GROUP_SIZES:
        return f"group size {g} (tinygemm takes {GROUP_SIZES})"
    if k % g or _inner_k_tiles(k) is None or n % 8:
        return f"shape {k}×{n} (needs in % 32 == 0 and out % 8 == 0)"
    g_idx = getattr(layer, "g_idx", None)
    if g_idx is not None and g_idx.numel() == k:
        expected = torch.arange(k, device=g_idx.device) // g
        if not torch.equal(g_idx.to(expected.dtype), expected):
            return "act-order (desc_act) groups"
    return None


ROWS_PER_BLOCK = 2048     # input channels read per pass at most,
ELEMENTS_PER_BLOCK = 1 << 23   # and at most ~8M weights per pass: each temporary stays under ~64 MB at any size


def _rows_per_block(n: int, g: int) -> int:
    return max(g, min(ROWS_PER_BLOCK, ELEMENTS_PER_BLOCK // n) // g * g)


def _awq_rows(layer, k: int, n: int, g: int):
    """``rows(r0, r1) -> W[r0:r1]`` (bf16/fp16 [rows, n]) for an AWQ layer whose packing gptqmodel's AWQ
    dequantizer reads (qweight [k, n/8] and qzeros [k/g, n/8] int32, packed along the output channels); None for
    any other layer. Its torch kernel dequantizes the whole weight on every call, through int32/int64 temporaries
    of k × n each: 1.97 GB above the weights while the GLM-6B-class model was repacked on an H200 (GPTQ: 0.78 GB)."""
    qweight, qzeros = getattr(layer, "qweight", None), getattr(layer, "qzeros", None)
    if "awq" not in type(layer).__name__.lower() or qweight is None or qzeros is None or \
            tuple(qweight.shape) != (k, n // 8) or tuple(qzeros.shape) != (k // g, n // 8):
        return None
    from gptqmodel.quantization.awq.utils.packing_utils import dequantize_gemm

    def rows(r0: int, r1: int) -> torch.Tensor:
        return dequantize_gemm(qweight[r0:r1], qzeros[r0 // g:r1 // g], layer.scales[r0 // g:r1 // g], 4, g)
    return rows


def _kernel_rows(layer, k: int):
    """``rows(r0, r1) -> W[r0:r1]`` (+ bias) read by running the layer on rows of an identity matrix."""
    dev = layer.scales.device

    def rows(r0: int, r1: int) -> torch.Tensor:
        eye = torch.zeros(r1 - r0, k, dtype=torch.bfloat16, device=dev)
        eye[:, r0:r1].fill_diagonal_(1)
        # gptqmodel compiles its dequantize step per layer instance: run it eagerly here (no compile at load)
        with torch.compiler.set_stance("force_eager"):
            return layer(eye)
    return rows


@torch.no_grad()
def _integer_codes(layer, k: int, n: int, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's 4-bit codes shifted to 0..15 (uint8 [k, n]) and each group's lowest code (float [k/g, n]),
    read block by block of input channels so that no k × k identity or float32 copy of the weight is ever whole."""
    dev = layer.scales.device
    scales = layer.scales.float().reshape(k // g, n)         # [groups, n] (GPTQ and AWQ alike)
    awq_rows = _awq_rows(layer, k, n, g)
    weight_rows = awq_rows or _kernel_rows(layer, k)
    bias = None if awq_rows else getattr(layer, "bias", None)
    q = torch.empty(k, n, dtype=torch.uint8, device=dev)
    lows = torch.empty(k // g, n, dtype=torch.float32, device=dev)
    rows = _rows_per_block(n, g)
    for r0 in range(0, k, rows):
        r1 = min(k, r0 + rows)
        w = weight_rows(r0, r1).float()                     # [rows, n]: row i is W[:, r0 + i] (+ bias)
        if not torch.isfinite(w).all():
            raise ValueError("cannot repack for tinygemm: the layer's own kernel gives non-finite weights")
        if bias is not None:
            w -= bias.float()
        s_rows = scales[r0 // g:r1 // g].repeat_interleave(g, dim=0)
        codes = torch.round(w / s_rows)                     # c = q - z, integers
        err = (codes * s_rows - w).abs().max().item()
        tol = 1e-2 * float(w.abs().max().clamp_min(1e-6))
        if err > tol:
            raise ValueError(f"cannot repack for tinygemm: scales do not explain the weights (max error {err:.3g})")
        lo = codes.reshape(-1, g, n).amin(dim=1)            # [groups in block, n]
        codes -= lo.repeat_interleave(g, dim=0)
        if codes.min() < 0 or codes.max() > 15:
            raise ValueError("cannot repack for tinygemm: a group spans more than 16 levels (not a 4-bit layer?)")
        q[r0:r1] = codes.to(torch.uint8)
        lows[r0 // g:r1 // g] = lo
        del w, s_rows, codes
    return q, lows


@torch.no_grad()
def repack(layer) -> TinyGemmInt4Linear:
    """A TinyGemmInt4Linear computing what ``layer`` (a gptqmodel GPTQ/AWQ QuantLinear) computes."""
    reason = unsupported_reason(layer)
    if reason:
        raise ValueError(f"cannot repack for tinygemm: {reason}")
    k, n, g = int(layer.in_features), int(layer.out_features), int(layer.group_size)
    q, lo = _integer_codes(layer, k, n, g)
    return from_codes(q, layer.scales.float().reshape(k // g, n), lo, g, getattr(layer, "bias", None))


@torch.no_grad()
def from_codes(q: torch.Tensor, scales: torch.Tensor, lo: torch.Tensor, g: int,
               bias: torch.Tensor | None = None) -> TinyGemmInt4Linear:
    """The layer of weight ``W[i, j] = (q[i, j] + lo[i // g, j]) * scales[i // g, j]`` (input channel i, output j):
    codes ``q`` uint8 [k, n] in 0..15, ``scales`` and ``lo`` (each group's lowest code) float [k/g, n]."""
    k, n = q.shape
    sz = torch.stack([scales, (8 + lo) * scales], dim=2).to(torch.bfloat16).contiguous()   # [groups, n, 2]
    del lo
    q_nk = q.t().contiguous()                                                   # [n, k] uint8
    del q
    tiles = _inner_k_tiles(k)
    if q_nk.is_cuda:
        packed = torch.ops.aten._convert_weight_to_int4pack(q_nk[:, ::2] << 4 | q_nk[:, 1::2], tiles)
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q_nk.to(torch.int32), 1)
    from .int4_unpack import detect_layout
    layout = detect_layout(packed, q_nk)     # the dequantize path only where the packing reads back exactly
    del q_nk
    return TinyGemmInt4Linear(packed, sz, g, k, n, bias, layout)


def kernel_label(layers: list[nn.Module]) -> str:
    """The kernel text of a model's tinygemm layers: which paths they have (``PATHS``), and how many of them
    have no dequantize path (their packing did not read back)."""
    tiny = [m for m in layers if isinstance(m, TinyGemmInt4Linear)]
    without = sum(1 for m in tiny if m.layout is None)
    gemv = sum(1 for m in tiny if m.gemv is not None)
    first = "" if not gemv else f"{GEMV_PATH}; " if gemv == len(tiny) else f"{GEMV_PATH} in {gemv} of {len(tiny)}; "
    if tiny and without == len(tiny):
        return f"{KERNEL} ({first}tinygemm only)"
    return f"{KERNEL} ({first}{PATHS}" + (f"; {without} of {len(tiny)} layers tinygemm only)" if without else ")")


def enable_gemv(model) -> list[str]:
    """Give every CUDA tinygemm layer the Triton GEMV for its one-row products (``playground.int4_gemv``), tuned
    once per layer shape; returns why the others keep tinygemm (empty: all of them took it)."""
    from . import int4_gemv
    reasons = {}
    for layer in model.modules():
        if not isinstance(layer, TinyGemmInt4Linear):
            continue
        why = "not on CUDA" if not layer.packed.is_cuda else int4_gemv.unsupported_reason(
            layer.packed, layer.group_size, layer.in_features, layer.out_features)
        if why:
            reasons[why] = reasons.get(why, 0) + 1
            continue
        layer.gemv = layer.gemv_tuned = int4_gemv.tune(layer.packed, layer.scales_and_zeros, layer.group_size)
    return [f"{n} layers: {why}" for why, n in reasons.items()]


def use_gemv(model, on: bool) -> int:
    """Switch the Triton GEMV of ``enable_gemv``'s layers on or off (off: tinygemm for their one-row products too;
    a compiled step keeps what it was traced with); returns how many layers have it."""
    n = 0
    for layer in model.modules():
        tuned = getattr(layer, "gemv_tuned", None) if isinstance(layer, TinyGemmInt4Linear) else None
        if tuned is not None:
            layer.gemv = tuned if on else None
            n += 1
    return n


def _drop_tensors(layer: nn.Module) -> None:
    """Let go of every tensor a replaced layer holds: its weights and the caches kept in its attributes (the bf16
    weight gptqmodel's GPTQ torch kernel dequantized and kept when ``_integer_codes`` ran it). gptqmodel's GPTQ
    layers sit in reference cycles, so the layer object lives on until Python's next garbage collection; without
    this its memory did too (H200, GLM-6B class: 2.7 GB more during the first replies than AWQ)."""
    for store in (layer._parameters, layer._buffers):
        for name in store:
            store[name] = None
    for name, value in list(vars(layer).items()):
        if torch.is_tensor(value):
            setattr(layer, name, None)
        elif isinstance(value, dict) and name not in ("_parameters", "_buffers", "_modules") and \
                any(torch.is_tensor(v) for v in value.values()):
            value.clear()


def convert_model(model, layers: list[tuple[str, nn.Module]]) -> tuple[int, list[str]]:
    """Swap each (name, QuantLinear) for its tinygemm version; returns (converted, reasons left as they were).

    Layer by layer, and ``layers`` is emptied as it goes: each original is freed as soon as its packed copy is in
    place, so the load never holds the model twice (it did: the list kept every original to the end)."""
    skipped = []
    done = 0
    layers.reverse()
    while layers:
        name, layer = layers.pop()
        try:
            new = repack(layer)
        except ValueError as exc:
            skipped.append(f"{name}: {exc}")
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
        _drop_tensors(layer)
        del layer, new
        done += 1
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return done, skipped
