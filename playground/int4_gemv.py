"""A Triton matrix-vector kernel for one-row int4 products, reading tinygemm's own packed weights (issue #19).

At batch 1 a decode step is ~130 int4 matrix-vector products. tinygemm (``aten::_weight_int4pack_mm``) is a tile
kernel made for 16+ rows: on an H200 the Mistral-7B shape's GPTQ/AWQ fast decode read its 3.9 GB of weights at
about 0.4 of the measured bandwidth. This kernel computes ``y = x W^T`` for a single row ``x`` straight from the
tensors a ``TinyGemmInt4Linear`` already holds (no second copy of the weights):

* ``packed``: int32 ``[n/8, k/(16T), 32, T/2]`` (``playground/int4_unpack.py`` documents the layout): for output
  row ``r`` and chunk ``ko`` of ``16T`` input columns, the ``2T`` words of lanes ``4(r%8) .. 4(r%8)+3`` are
  contiguous, so a program's rows are read as whole 64-byte runs; nibble ``j`` of word ``(t%4, p)`` is input column
  ``16T·ko + 32p + 8(j%4) + 2(t%4) + j//4``, and ``x`` is gathered in that order (it is small and cached) instead
  of permuting the weights.
* ``scales_and_zeros``: bf16 ``[groups, n, 2]``, ``w = (q - 8)·s + zero``. When a chunk lies inside one group
  (``group_size % 16T == 0``: group 128 with the usual ``T = 8``), a chunk's sum is
  ``s·Σ q·x + (zero - 8s)·Σ x``: one multiply-add per weight, the scales applied once per chunk and row.
* Split-K: the chunks are shared among ``split`` programs per row block, each writing its own float32 partial
  ``[split, n]``; the caller sums them (inside the compiled decode step inductor fuses that sum and the cast into
  the next kernel). The (rows per program, warps, split) of each layer shape is chosen once per process by timing
  the candidates on the GPU (``tune``; outside CUDA-graph capture), and a layer keeps the choice as plain ints,
  so the compiled step is traced with them.

The kernel is registered as the custom op ``playground::int4_tiles_gemv`` (opaque to ``torch.compile``, captured by
CUDA graphs like any kernel). On the CPU the same kernel runs through Triton's interpreter (``TRITON_INTERPRET=1``),
which is how the CPU tests check its numerics against the dequantized weight; the layers themselves use it only on
CUDA. Products of more than one row keep tinygemm (and dequantize + matmul above ``DEQUANTIZE_ABOVE_ROWS``).

Measured (H200, commit d3c7091, results/gpu-h200-int4-gemv-probe): tuned and timed inside CUDA graphs it takes
3.2-3.3x tinygemm's time on the Mistral-7B shape's products (450-585 GB/s against 1450-1890), and a GPTQ model's
compiled decode through it did not match its full forward (tests/gpu/test_gpu_int4_gemv.py failed; unexplained).
So it is opt-in (``kernel="triton-gemv"``), a base to improve, not a default: each weight costs two integer and two
fp32 operations here, where tinygemm and Marlin dequantize two values per instruction and use tensor cores.
"""
from __future__ import annotations

import threading

import torch

try:                     # the GPU machine's torch brings triton; the CPU machine has it for the interpreter tests
    import triton
    import triton.language as tl
except ImportError:      # pragma: no cover - a torch without triton: the layers keep tinygemm
    triton = None

ROW_BLOCKS = (8, 16, 32)          # output rows per program (whole 8-row tiles)
WARPS = (1, 2, 4)
SPLITS = (1, 2, 4, 8)
DEFAULT = (8, 1, 4)               # used when nothing was tuned for a shape (and during CUDA-graph capture)
_TUNED: dict[tuple, tuple[int, int, int]] = {}
LAUNCH = "op"                     # "op": through the custom op; "direct": the kernel launched in the traced code
_TUNE_LOCK = threading.Lock()


def unsupported_reason(packed: torch.Tensor, group_size: int, in_features: int, out_features: int) -> str | None:
    """Why a layer's packed weights cannot go through this kernel (None: they can)."""
    if triton is None:
        return "triton is not installed"
    if packed.dtype != torch.int32 or packed.dim() != 4 or packed.shape[2] != 32:
        return "not tinygemm's CUDA packing"
    chunk = packed.shape[3] * 32
    if group_size % chunk:
        return f"group size {group_size} is not a multiple of the {chunk}-column chunk"
    if out_features % 8 or in_features % chunk:
        return f"shape {in_features}x{out_features}"
    return None


if triton is not None:
    def _int4_tiles_gemv(x_ptr, w_ptr, sz_ptr, out_ptr, N, KO, CHUNKS_PER_SPLIT, CHUNKS_PER_GROUP,
                         HT: tl.constexpr, BLOCK_ROWS: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        rows = pid_n * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)                 # output rows of this program
        c = tl.arange(0, 4 * HT)                                             # word (t%4, p) of a row's run
        j = tl.arange(0, 8)                                                  # nibble in a word
        col = 32 * (c % HT)[:, None] + 8 * (j % 4)[None, :] + 2 * (c // HT)[:, None] + (j // 4)[None, :]
        shifts = (4 * j)[None, None, :]
        row_words = (rows // 8) * (KO * 32 * HT) + (rows % 8) * (4 * HT)
        acc = tl.zeros([BLOCK_ROWS], dtype=tl.float32)
        first = pid_k * CHUNKS_PER_SPLIT
        last = tl.minimum(first + CHUNKS_PER_SPLIT, KO)
        for ko in range(first, last):
            words = tl.load(w_ptr + row_words[:, None] + ko * (32 * HT) + c[None, :])          # [rows, 4HT]
            # the code as a float without an int-to-float conversion (a quarter-rate instruction that would bound
            # the kernel below the memory's speed): OR it into the mantissa of 2^23 and subtract 2^23 (exact)
            q = (((words[:, :, None] >> shifts) & 15) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
            xs = tl.load(x_ptr + ko * (32 * HT) + col).to(tl.float32)                        # [4HT, 8]
            dot = tl.sum(tl.sum(q * xs[None, :, :], axis=2), axis=1)
            g = ko // CHUNKS_PER_GROUP
            s = tl.load(sz_ptr + (g * N + rows) * 2).to(tl.float32)
            z = tl.load(sz_ptr + (g * N + rows) * 2 + 1).to(tl.float32)
            acc += s * dot + (z - 8.0 * s) * tl.sum(tl.sum(xs, axis=1), axis=0)
        tl.store(out_ptr + pid_k * N + rows, acc)

    _jitted = triton.jit(_int4_tiles_gemv)     # an interpreted function when TRITON_INTERPRET=1 at import


def launch(x: torch.Tensor, packed: torch.Tensor, sz: torch.Tensor, group_size: int, rows_per_program: int,
           warps: int, split: int) -> torch.Tensor:
    """Float32 partial sums ``[split, n]`` of ``x [k] · W^T`` (sum them over dim 0 for ``y``)."""
    n_tiles, ko, lanes, ht = packed.shape
    n = n_tiles * 8
    per_split = -(-ko // split)
    out = torch.empty(split, n, dtype=torch.float32, device=x.device)
    grid = (n // rows_per_program, split)
    args = (x.contiguous(), packed, sz, out, n, ko, per_split, group_size // (32 * ht))
    _jitted[grid](*args, HT=ht, BLOCK_ROWS=rows_per_program, num_warps=warps)
    return out


def _candidates(n: int, ko: int):
    for rows in ROW_BLOCKS:
        if n % rows:
            continue
        for warps in WARPS:
            for split in SPLITS:
                if split <= ko:
                    yield rows, warps, split


def tune(packed: torch.Tensor, sz: torch.Tensor, group_size: int) -> tuple[int, int, int]:
    """(rows per program, warps, split) fastest for this shape on this GPU, timed once per process and shape."""
    n_tiles, ko, _, ht = packed.shape
    key = (n_tiles * 8, ko, ht, group_size, torch.cuda.get_device_name(packed.device))
    with _TUNE_LOCK:
        if key in _TUNED:
            return _TUNED[key]
        if torch.cuda.is_current_stream_capturing():
            return DEFAULT
        x = torch.randn(ko * 32 * ht, dtype=torch.bfloat16, device=packed.device)
        best, best_ms = DEFAULT, float("inf")
        for cand in _candidates(n_tiles * 8, ko):
            try:
                launch(x, packed, sz, group_size, *cand)           # compile, and warm the caches
            except Exception:  # noqa: BLE001 - a configuration this GPU cannot run is not a candidate
                continue
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                launch(x, packed, sz, group_size, *cand)
            end.record()
            end.synchronize()
            ms = start.elapsed_time(end) / 20
            if ms < best_ms:
                best, best_ms = cand, ms
        _TUNED[key] = best
        return best


if triton is not None:
    @torch.library.custom_op("playground::int4_tiles_gemv", mutates_args=())
    def int4_tiles_gemv(x: torch.Tensor, packed: torch.Tensor, sz: torch.Tensor, group_size: int,
                        rows_per_program: int, warps: int, split: int) -> torch.Tensor:
        return launch(x.reshape(-1), packed, sz, group_size, rows_per_program, warps, split)

    @int4_tiles_gemv.register_fake
    def _(x, packed, sz, group_size, rows_per_program, warps, split):
        return x.new_empty((split, packed.shape[0] * 8), dtype=torch.float32)


def gemv(x: torch.Tensor, packed: torch.Tensor, sz: torch.Tensor, group_size: int,
         config: tuple[int, int, int]) -> torch.Tensor:
    """``x [1, k] · W^T`` as bf16 ``[1, n]`` through the kernel (``config`` from ``tune``). CPU tensors run in
    Triton's interpreter (``TRITON_INTERPRET=1`` before triton is imported: the CPU tests)."""
    if LAUNCH == "direct":      # dynamo traces the Triton launch itself (a user kernel: inductor emits the launch)
        part = launch(x.reshape(-1), packed, sz, group_size, *config)
    else:
        part = torch.ops.playground.int4_tiles_gemv(x, packed, sz, group_size, *config)
    return (part.sum(0, keepdim=True) if part.shape[0] > 1 else part).to(torch.bfloat16)
