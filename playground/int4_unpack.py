"""Reading tinygemm's packed int4 weights back as codes, so a layer can dequantize itself for a large product.

tinygemm (``aten::_weight_int4pack_mm``) is a matrix-vector kernel: on an H200 its prefill of 512 tokens was
10-17x slower than bf16's (TTFT 452 ms against 42 ms, Baichuan-13B shape). For many rows the layer instead
dequantizes its weight into a bf16 temporary and runs a regular matmul (``TinyGemmInt4Linear``). That needs the
4-bit codes, which exist only in the packed tensor; keeping a second copy would double the layer's memory, so the
packed tensor is unpacked on the fly, with pure tensor ops (reshape, shift, permute), for the layouts torch packs:

* CUDA (``_convert_weight_to_int4pack``, aten/src/ATen/native/cuda/int4mm.cu, ``matrix_to_m16n8k16_Bint4_layout``):
  int32 ``[n/8, k/(16·T), 32, T/2]`` for T inner k-tiles; lane ``t`` of a tile holds output row ``8·tile + t//4``;
  each int32 holds 8 codes, nibble ``j`` (bits 4j..4j+3) being input column
  ``16·T·kouter + 32·p + 16·h + 8·e + 2·(t%4) + b`` with ``j = 4b + 2h + e``.
* CPU (``_convert_weight_to_int4pack_for_cpu``, aten/src/ATen/native/cpu/int4mm_kernel.cpp): uint8 ``[n, k/2]`` in
  blocks of ``BLOCK_N`` rows (64 with AVX-512, 32 otherwise), ``[n/BLOCK_N, k, BLOCK_N/2]``; with AVX-512 or AVX2 a
  byte's low nibble is row ``d`` and its high nibble row ``d + BLOCK_N/2`` of its block ("halves"), without
  vectorization rows ``2d`` and ``2d+1`` ("pairs").

Which one applies is decided per layer when it is packed (``detect_layout``): a layout is used only if it gives back
exactly the codes that were packed, so a torch whose packing differs loses the dequantize path (the layer keeps
tinygemm for every size, and says so), never its correctness.
"""
from __future__ import annotations

import torch

CUDA_TILES = "cuda-m16n8k16"
CPU_LAYOUTS = {"cpu-block64-halves": (64, "halves"), "cpu-block32-halves": (32, "halves"),
               "cpu-block32-pairs": (32, "pairs")}


def _nibbles(packed_bytes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return packed_bytes & 15, packed_bytes >> 4


def unpack_cuda_tiles(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Codes uint8 [n, k] from tinygemm's CUDA layout (int32 [n/8, k/(16T), 32, T/2])."""
    n_tiles, k_outer, lanes, half_t = packed.shape
    # int32 little-endian: byte m of a word holds nibbles j = 2m (low) and 2m + 1 (high)
    lo, hi = _nibbles(packed.contiguous().view(torch.uint8).reshape(n_tiles, k_outer, lanes, half_t, 4))
    codes = torch.stack((lo, hi), dim=-1)                 # [..., m, s] with j = 2m + s = 4b + 2h + e
    del lo, hi
    codes = codes.reshape(n_tiles, k_outer, 8, 4, half_t, 2, 2, 2)   # [tile, kouter, t//4, t%4, p, b, h, e]
    return codes.permute(0, 2, 1, 4, 6, 7, 3, 5).reshape(n, k)       # rows (tile, t//4), cols (kouter, p, h, e, t%4, b)


def unpack_cpu_blocks(packed: torch.Tensor, n: int, k: int, block: int, order: str) -> torch.Tensor:
    """Codes uint8 [n, k] from the CPU layout (uint8 [n, k/2] as [n/block, k, block/2])."""
    lo, hi = _nibbles(packed.reshape(n // block, k, block // 2))
    rows = torch.cat((lo, hi), dim=-1) if order == "halves" else torch.stack((lo, hi), dim=-1)
    del lo, hi
    return rows.reshape(n // block, k, block).transpose(1, 2).reshape(n, k)


def unpack(packed: torch.Tensor, layout: str, n: int, k: int) -> torch.Tensor:
    if layout == CUDA_TILES:
        return unpack_cuda_tiles(packed, n, k)
    block, order = CPU_LAYOUTS[layout]
    return unpack_cpu_blocks(packed, n, k, block, order)


def candidates(packed: torch.Tensor, n: int, k: int) -> list[str]:
    """The layouts whose shape fits this packed tensor."""
    if packed.dtype == torch.int32 and packed.dim() == 4 and packed.shape[0] * 8 == n and packed.shape[2] == 32:
        return [CUDA_TILES]
    if packed.dtype == torch.uint8 and tuple(packed.shape) == (n, k // 2):
        return [name for name, (block, _) in CPU_LAYOUTS.items() if n % block == 0]
    return []


@torch.no_grad()
def detect_layout(packed: torch.Tensor, codes_nk: torch.Tensor) -> str | None:
    """The layout that gives back exactly ``codes_nk`` (uint8 [n, k], what was packed) from ``packed``, or None."""
    n, k = codes_nk.shape
    for layout in candidates(packed, n, k):
        if torch.equal(unpack(packed, layout, n, k), codes_nk):
            return layout
    return None


def dequantize(packed: torch.Tensor, scales_and_zeros: torch.Tensor, layout: str, n: int, k: int,
               group_size: int) -> torch.Tensor:
    """The layer's weight, bf16 [n, k]: ``(q - 8) · scale + zero`` per group, as tinygemm computes it (one
    rounding, like its fused multiply-add). Temporaries: the codes (1 byte a weight) beside the result (2 bytes):
    at most 1.5x the layer's weight in bf16 while it is made."""
    codes = unpack(packed, layout, n, k)
    w = codes.to(torch.bfloat16)
    del codes
    w = w.view(n, k // group_size, group_size).sub_(8)
    scale = scales_and_zeros[:, :, 0].t().unsqueeze(-1)         # [n, groups, 1]
    zero = scales_and_zeros[:, :, 1].t().unsqueeze(-1)
    if torch.compiler.is_compiling():      # inductor fuses all of it into the kernel that writes the weight (and
        return torch.addcmul(zero, w, scale).reshape(n, k)    # cannot lower addcmul's out= on a strided view)
    return torch.addcmul(zero, w, scale, out=w).view(n, k)
