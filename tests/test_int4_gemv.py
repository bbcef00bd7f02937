"""The Triton int4 GEMV (issue #19, ``playground/int4_gemv.py``) on the CPU: the kernel itself runs in Triton's
interpreter (a subprocess with ``TRITON_INTERPRET=1``, which must be set before triton is imported) over weights
packed in tinygemm's CUDA layout (``_pack_like_cuda``: the CUDA packing transcribed), against the weight read back
by ``int4_unpack.dequantize``, for every row block / split and for 4 and 8 inner k-tiles; the custom op traces
into one ``torch.compile`` graph; which layers can take it; the benchmark's ``fast-tinygemm`` A/B mode."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from test_int4_prefill import _pack_like_cuda

ROOT = Path(__file__).resolve().parents[1]

INTERPRETED = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, "tests")
    from test_int4_prefill import _pack_like_cuda
    from playground import int4_gemv
    from playground.int4_unpack import CUDA_TILES, dequantize

    def case(n, k, g, tiles, configs, seed):
        gen = torch.Generator().manual_seed(seed)
        q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=gen)
        packed = _pack_like_cuda(q, tiles)
        s = torch.rand(k // g, n, generator=gen) * 0.02 + 0.001
        z = torch.randn(k // g, n, generator=gen) * 0.05
        sz = torch.stack([s, z], 2).to(torch.bfloat16).contiguous()
        assert int4_gemv.unsupported_reason(packed, g, k, n) is None
        w = dequantize(packed, sz, CUDA_TILES, n, k, g).float()
        x = torch.randn(1, k, generator=gen).to(torch.bfloat16)
        ref = x.float() @ w.t()
        for cfg in configs:
            y = int4_gemv.gemv(x, packed, sz, g, cfg)
            assert y.shape == (1, n) and y.dtype == torch.bfloat16, (y.shape, y.dtype)
            rel = ((y.float() - ref).norm() / ref.norm()).item()
            print(f"n={n} k={k} g={g} T={tiles} cfg={cfg}: relative L2 {rel:.5f}")
            assert rel < 0.01, (n, k, g, tiles, cfg, rel)

    case(64, 512, 128, 8, [(8, 1, 1), (16, 2, 4), (32, 4, 3), (64, 1, 8)], 0)   # 4 chunks: split 8 > chunks
    case(48, 768, 256, 8, [(8, 1, 2), (16, 1, 5)], 1)                          # group of 2 chunks; ragged split
    case(40, 192, 64, 4, [(8, 2, 1), (8, 1, 2)], 2)                            # 4 inner k-tiles (64-col chunks)

    # the custom op in one compiled graph (dynamo sees only the op and its fake: no graph break)
    n, k, g = 64, 512, 128
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=gen)
    packed = _pack_like_cuda(q, 8)
    sz = torch.stack([torch.rand(k // g, n, generator=gen) * 0.02 + 0.001,
                      torch.zeros(k // g, n)], 2).to(torch.bfloat16).contiguous()
    x = torch.randn(1, k, generator=gen).to(torch.bfloat16)
    op = torch.ops.playground.int4_tiles_gemv
    graphs = []
    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    f = torch.compile(lambda x: op(x, packed, sz, g, 16, 1, 4).sum(0, keepdim=True).to(torch.bfloat16) * 2,
                      backend=backend, fullgraph=True)
    y = f(x)
    eager = int4_gemv.gemv(x, packed, sz, g, (16, 1, 4)) * 2
    assert len(graphs) == 1 and torch.allclose(y.float(), eager.float(), rtol=1e-2, atol=1e-3)
    print("compiled: one graph")
""")


def _interpreted(script: str) -> str:
    """Run ``script`` in a fresh interpreter with Triton's interpreter on (triton comes with requirements-dev.txt:
    without it this fails, it does not skip); its stdout."""
    import triton  # noqa: F401
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    print(proc.stdout[-3000:])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


def test_the_kernel_computes_the_dequantized_product_in_tritons_interpreter():
    stdout = _interpreted(INTERPRETED)
    assert stdout.count("relative L2") == 8 and "compiled: one graph" in stdout


def test_which_packings_and_groups_the_kernel_takes():
    from playground import int4_gemv
    q = torch.randint(0, 16, (64, 512), dtype=torch.uint8)
    cuda_like = _pack_like_cuda(q, 8)                       # 128-column chunks
    assert int4_gemv.unsupported_reason(cuda_like, 128, 512, 64) is None
    assert int4_gemv.unsupported_reason(cuda_like, 256, 512, 64) is None
    assert "group size 64" in int4_gemv.unsupported_reason(cuda_like, 64, 512, 64)
    cpu_packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
    assert int4_gemv.unsupported_reason(cpu_packed, 128, 512, 64) == "not tinygemm's CUDA packing"


def test_a_cpu_model_keeps_tinygemm_and_the_benchmark_says_fast_tinygemm_measures_nothing_new(manager):
    """kernel=triton-gemv on the CPU: the layers stay tinygemm (the GEMV is for CUDA), the load says why; the
    benchmark's fast-tinygemm row of such a model is 'unsupported' with the reason, not a duplicate fast row."""
    from conftest import DEFAULT_MODEL
    from playground.int4_tinygemm import TinyGemmInt4Linear, use_gemv
    from playground.variants import VariantOptions
    lm = manager.get(DEFAULT_MODEL, "gptq", options=VariantOptions(kernel="triton-gemv"))
    layers = [m for m in lm.model.modules() if isinstance(m, TinyGemmInt4Linear)]
    assert layers and all(m.gemv is None for m in layers)
    assert "Triton GEMV" not in lm.kernel and lm.kernel.startswith("TinyGemmInt4Linear")
    assert use_gemv(lm.model, True) == 0

    from benchmarks.config import RunConfig
    from benchmarks.rows import ResultRow
    from benchmarks.worker import measure_mode
    cfg = RunConfig(models=[DEFAULT_MODEL], variants=["gptq"], batch_sizes=[1], prompt_tokens=[8], new_tokens=[4],
                    repeats=1, warmup=0, device="cpu", out="/tmp/unused", decode_modes=["fast-tinygemm"])
    row = ResultRow.new(DEFAULT_MODEL, "gptq", "cpu", 1, 8, 4)
    measure_mode(lm, cfg, row, "cpu", "fast-tinygemm", "default", ev=None)
    assert row.status == "unsupported" and "no layer here runs the Triton GEMV" in row.error


def test_use_gemv_switches_tuned_layers_and_the_kernel_text_says_so():
    from playground.int4_tinygemm import GEMV_PATH, from_codes, kernel_label, use_gemv
    from torch import nn
    k, n, g = 256, 64, 128
    layers = [from_codes(torch.randint(0, 16, (k, n), dtype=torch.uint8), torch.rand(k // g, n) * 0.01 + 0.001,
                         torch.full((k // g, n), -8.0), g) for _ in range(3)]
    model = nn.Sequential(*layers)
    assert use_gemv(model, True) == 0 and GEMV_PATH not in kernel_label(layers)
    for m in layers[:2]:
        m.gemv_tuned = (16, 1, 2)            # what enable_gemv leaves on CUDA layers
    assert use_gemv(model, True) == 2 and [m.gemv for m in layers] == [(16, 1, 2), (16, 1, 2), None]
    assert kernel_label(layers).startswith(f"TinyGemmInt4Linear ({GEMV_PATH} in 2 of 3; ")
    assert use_gemv(model, False) == 2 and all(m.gemv is None for m in layers)
    assert GEMV_PATH not in kernel_label(layers)


COMPILED_MODEL = textwrap.dedent("""
    import sys, torch
    sys.path.insert(0, "tests")
    from test_int4_prefill import _pack_like_cuda
    from transformers import DynamicCache
    from benchmarks.random_weights import ensure_random_model
    from playground import int4_tinygemm
    from playground.fast_decode import FastDecoder
    from playground.int4_tinygemm import TinyGemmInt4Linear
    from playground.int4_unpack import CUDA_TILES, unpack
    from playground.manager import ModelManager
    from playground.variants import VariantOptions

    # every layer in tinygemm's CUDA packing, the GEMV for one row and the dequantize path for more (the CPU's own
    # tinygemm op cannot read the CUDA packing)
    int4_tinygemm.DEQUANTIZE_ABOVE_ROWS = 1
    path = ensure_random_model("tiny-llama", "cpu")[0]
    lm = ModelManager(device="cpu", budget_bytes=1 << 62).get(
        path, "gptq", options=VariantOptions(fast_decode="off", kernel="tinygemm"))
    model = lm.model
    layers = [m for m in model.modules() if isinstance(m, TinyGemmInt4Linear)]
    for m in layers:
        codes = unpack(m.packed, m.layout, m.out_features, m.in_features)
        # 32 rows a program: the interpreter runs each program in numpy, and fewer programs keep this test short
        m.packed, m.layout, m.gemv = _pack_like_cuda(codes, 8), CUDA_TILES, (32, 1, 2)
    gen = torch.Generator().manual_seed(1)
    vocab = model.config.vocab_size
    prompt, forced = torch.randint(0, vocab, (1, 32), generator=gen), torch.randint(0, vocab, (1, 8), generator=gen)
    p = prompt.shape[1]
    rel = lambda a, b: ((a.float() - b.float()).norm() / b.float().norm()).item()
    with torch.no_grad():
        full = model(torch.cat([prompt, forced], 1)).logits.float()[0]
        cache = DynamicCache(config=model.config)
        model(prompt, past_key_values=cache, use_cache=True)
        eager = [model(forced[:, i:i + 1], past_key_values=cache, use_cache=True).logits[0, -1] for i in range(8)]
        fd = FastDecoder(model, "cpu", compile=True, backend="eager")   # dynamo's graph, run without inductor
        cache = fd.acquire(1, p + 8)
        fd.prefill(prompt, cache)
        steps = [fd.step(forced[:, i:i + 1], cache)[0] for i in range(8)]
    eager_err = max(rel(s, full[p + i]) for i, s in enumerate(eager))
    compiled_err = max(rel(s, full[p + i]) for i, s in enumerate(steps))
    print(f"layers {len(layers)}; eager {eager_err:.4f}; compiled {compiled_err:.4f} ({fd.info.mode}, "
          f"{fd.compiles} compile(s), fallback {fd.info.fallback_reason!r})")
    assert len(layers) == 14 and eager_err < 0.02 and compiled_err < 0.02
    assert fd.info.mode == "compiled (eager)" and fd.compiles == 1 and not fd.info.fallback_reason
""")


def test_a_gptq_model_decodes_through_the_gemv_inside_a_compiled_step_in_tritons_interpreter():
    """The whole path but CUDA graphs, on the CPU: a random-code GPTQ model (tiny-llama) with every layer in
    tinygemm's CUDA packing decodes through the GEMV custom op in eager steps and in the compiled step (dynamo's one
    graph, no break, no fallback; run without inductor to keep CI short: with inductor it also matched, 0.0066),
    teacher-forced, with the logits of its full forward."""
    assert "compiled" in _interpreted(COMPILED_MODEL)
