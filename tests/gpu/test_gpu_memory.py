"""GPU memory truth (marker ``gpu``; deselected without CUDA): run on the lent GPU as tests/gpu/README.md says.

Random-weight models of real shapes (nothing is downloaded). What a user relies on when switching variants in the
chat: every load/unload gives every byte back (allocator within 64 MB of where it was before the load, what
nvidia-smi charges the process within 512 MB), for every variant with fast decoding on and off, with no climb
over the cycles; replies stream on CUDA for every variant; a 4-bit model costs about half of fp16 in nvidia-smi;
two variants loaded at once, one unloaded while the other keeps answering; an out-of-memory load leaves the
process usable.
"""
from __future__ import annotations

import gc
import os
import weakref

import pytest

import playground  # noqa: F401 - tests/conftest.py calls playground.process_setup() before CUDA starts
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

MB = 1024 ** 2
GB = 1024 ** 3
VARIANTS = ["int8", "gptq", "awq", "bf16", "fp16", "nf4", "fp4"]   # the ones that leaked first
ALLOCATOR_SLACK_MB = 64
NVML_SLACK_MB = 512
SHAPE = os.environ.get("PLAYGROUND_GPU_TEST_SHAPE", "tinyllama-1.1b")        # memory return, replies
RATIO_SHAPE = os.environ.get("PLAYGROUND_GPU_RATIO_SHAPE", "glm-6b-class")   # the 4-bit nvidia-smi ratio
RATIO_LIMIT = 0.55


@pytest.fixture(scope="module")
def model_path():
    from benchmarks.trackers import capture_nvml_baseline
    from benchmarks.random_weights import ensure_random_model
    capture_nvml_baseline()
    return ensure_random_model(SHAPE, "cuda")[0]


@pytest.fixture(scope="module")
def manager():
    from playground.manager import ModelManager
    mm = ModelManager(device="cuda", budget_bytes=1 << 62)
    yield mm
    mm.unload_all()


def levels() -> dict:
    from benchmarks.experiments.reliability import nvml_process_bytes
    torch.cuda.synchronize()
    nv = nvml_process_bytes()
    return {"cuda_mb": torch.cuda.memory_allocated() / MB, "nvml_mb": (nv or 0) / MB}


def reply(lm, tokens: int = 24, decode: str = "auto"):
    from playground.engine import GenerationParams, chat
    params = GenerationParams(max_new_tokens=tokens, min_new_tokens=tokens, greedy=True, decode=decode)
    return chat(lm, [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}], None, params)


def check_reply(lm, fast: str) -> None:
    text, stats = reply(lm)
    assert stats.new_tokens == 24 and text.strip(), (stats, text)
    assert stats.ttft_s > 0 and stats.decode_tok_s > 0 and stats.peak_mem_gb > 0, stats
    assert stats.device == "cuda" and stats.mem_kind == "cuda allocator", stats
    if fast == "on":
        assert lm.fast is not None, lm.stats.notes
        assert stats.decode_mode.startswith("compiled"), (stats.decode_mode, stats.notes)
    else:
        assert lm.fast is None and stats.decode_mode == "eager", stats.decode_mode


def test_4bit_costs_about_half_of_fp16_in_nvidia_smi():
    """GPTQ and AWQ NVML peak <= 0.55 x fp16's, at 6B size, bs 1, prompt 512 (each variant in a fresh process
    as the benchmark runs them, so that one variant's leftovers cannot count against another)."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    code = (
        "import json, sys, torch\n"
        "from benchmarks.trackers import capture_nvml_baseline, MemoryTracker\n"
        "capture_nvml_baseline()\n"
        "from benchmarks.random_weights import ensure_random_model\n"
        "from playground.manager import ModelManager\n"
        "from playground.variants import VariantOptions\n"
        "from playground.engine import GenerationParams, chat\n"
        f"path = ensure_random_model({RATIO_SHAPE!r}, 'cuda')[0]\n"
        "torch.cuda.empty_cache()\n"
        "mm = ModelManager(device='cuda', budget_bytes=1 << 62)\n"
        "with MemoryTracker('cuda') as t:\n"
        "    lm = mm.get(path, sys.argv[1], options=VariantOptions(fast_decode='off'))\n"
        "    ids = torch.randint(10, 1000, (512,)).tolist()\n"
        "    p = GenerationParams(max_new_tokens=32, min_new_tokens=32, greedy=True)\n"
        "    from playground.engine import stream_reply\n"
        "    for ev in stream_reply(lm, [], None, p, prompt_ids=ids): pass\n"
        "print(json.dumps({'nvml_gb': t.result.peak_gpu_nvml_gb, 'allocated_gb': t.result.peak_gpu_mem_gb,\n"
        "                  'weights_gb': lm.stats.weights_bytes / 2**30, 'tokens': ev.stats.new_tokens}))\n")
    peaks = {}
    for variant in ("fp16", "gptq", "awq"):
        proc = subprocess.run([sys.executable, "-c", code, variant], cwd=root, capture_output=True, text=True,
                              timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        peaks[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("\nNVML peaks", RATIO_SHAPE, json.dumps(peaks))
    for variant in ("gptq", "awq"):
        ratio = peaks[variant]["nvml_gb"] / peaks["fp16"]["nvml_gb"]
        assert peaks[variant]["tokens"] == 32
        assert ratio <= RATIO_LIMIT, (variant, round(ratio, 3), peaks)


@pytest.mark.parametrize("variant,fast", [(v, f) for f in ("on", "off") for v in VARIANTS])   # slowest first
def test_load_reply_unload_gives_every_byte_back(model_path, manager, variant, fast):
    """Three load/reply/unload cycles (the first pays one-time costs: imports, cuBLAS workspaces, gptqmodel's
    buffers); the level after each later unload is within the slack of the level after the first, so a leak of
    anything per load (a model, a graph pool, a static cache) fails."""
    from playground.variants import VariantOptions
    options = VariantOptions(fast_decode=fast)
    start, after = None, []
    for cycle in range(3):
        lm = manager.get(model_path, variant, options=options)
        ref = weakref.ref(lm.model)
        taken = levels()
        check_reply(lm, fast)
        del lm
        manager.unload(model_path, variant)
        gc.collect()
        assert ref() is None, f"{variant} fast={fast}: the model outlived its unload: " + \
            "; ".join(u.held_by for u in manager.unreturned)
        level = levels()
        print(f"\n{variant} fast={fast} cycle {cycle}: loaded {taken}, after unload {level}")
        if cycle == 0:
            start = level
        else:
            after.append(level)
    for a in after:
        assert a["cuda_mb"] - start["cuda_mb"] <= ALLOCATOR_SLACK_MB, (variant, fast, start, after)
        assert a["nvml_mb"] - start["nvml_mb"] <= NVML_SLACK_MB, (variant, fast, start, after)
    assert after[1]["cuda_mb"] - after[0]["cuda_mb"] <= ALLOCATOR_SLACK_MB / 2, ("climbs", after)
    assert manager.unreturned == []


def test_two_variants_loaded_one_unloaded_the_other_keeps_answering(model_path, manager):
    from playground.variants import VariantOptions
    on = VariantOptions(fast_decode="on")
    base = levels()
    b = manager.get(model_path, "nf4", options=on)
    check_reply(b, "on")
    with_b = levels()                      # nf4 with its compiled step, static cache and graphs
    a = manager.get(model_path, "bf16", options=on)
    check_reply(a, "on")
    check_reply(b, "on")
    del a
    manager.unload(model_path, "bf16")
    assert levels()["cuda_mb"] - with_b["cuda_mb"] <= ALLOCATOR_SLACK_MB, "bf16's memory did not all come back"
    check_reply(b, "on")                   # its compiled step is rebuilt after the unload reset the compile caches
    again = levels()
    assert again["cuda_mb"] - with_b["cuda_mb"] <= ALLOCATOR_SLACK_MB, (base, with_b, again)
    del b
    manager.unload(model_path, "nf4")
    assert levels()["cuda_mb"] - base["cuda_mb"] <= ALLOCATOR_SLACK_MB


def test_out_of_memory_while_loading_leaves_the_process_usable(model_path, manager):
    from playground.errors import MemoryBudgetError
    base = levels()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_allocated() + 512 * MB) / total)
    try:
        with pytest.raises(MemoryBudgetError, match="out of memory loading"):
            manager.get(model_path, "bf16")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    gc.collect()
    assert levels()["cuda_mb"] - base["cuda_mb"] <= ALLOCATOR_SLACK_MB, "the failed load's tensors stayed"
    lm = manager.get(model_path, "nf4")
    check_reply(lm, "on")
    del lm
    manager.unload(model_path, "nf4")
