"""The GPU session's decode stages (issue #19), dry-run on the CPU with a tiny random Llama, so the lead can run them
blind on the GPU: ``decode-speed`` (bf16 eager / fast / fast-unfused, with the transformers peer) writes rows with
x_transformers and the fusion A/B; ``decode-profile`` writes its small json/txt summaries, fused and unfused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "experiments" / "device" / "gpu_session.sh"


def _stage(stage: str, tmp_path: Path, **env) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)       # the script calls python3: this interpreter's
    full = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"], DEVICE="cpu", ARCH="tiny-llama",
                RESULTS=str(tmp_path / "results"), PLAYGROUND_CACHE=str(tmp_path / "cache"), **env)
    proc = subprocess.run(["bash", str(SCRIPT), stage, str(out)], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_decode_speed_stage_writes_the_fusion_ab_and_x_transformers(tmp_path):
    _stage("decode-speed", tmp_path, PROMPT="24", NEW="6", REPEATS="1", BENCH_LIMIT="600")
    folder = tmp_path / "out" / "gpu-h200-tiny-llama-decode-bs1-bf16"
    rows = json.loads((folder / "results.json").read_text())["rows"]
    by_mode = {r["raw"].get("decode_requested") or r["decode_mode"]: r for r in rows}
    assert set(by_mode) == {"eager", "fast", "fast-unfused", "transformers-static"}, list(by_mode)
    assert all(r["status"] == "ok" and r["x_transformers"] is not None for r in rows), rows
    assert by_mode["fast"]["decode_mode"] == "compiled (inductor), fused qkv+gate/up"
    assert by_mode["fast-unfused"]["decode_mode"] == "compiled (inductor)"
    page = (folder / "report.html").read_text()
    assert "bf16+fast-unfused" in page and "bf16+transformers-static" in page and "× transformers" in page


def test_decode_profile_stage_writes_small_summaries(tmp_path):
    _stage("decode-profile", tmp_path, PROMPT="24", STEPS="8")
    folder = tmp_path / "out" / "gpu-h200-tiny-llama-decode-profile"
    for stem, mode in (("decode_profile", "compiled (inductor), fused qkv+gate/up"),
                       ("decode_profile-unfused", "compiled (inductor)")):
        r = json.loads((folder / f"{stem}.json").read_text())
        assert r["mode"] == mode and r["steps"] == 8 and r["device_us_per_step"] > 0
        assert r["top_kernels"] and r["top_kernels"][0]["us_per_step"] >= r["top_kernels"][-1]["us_per_step"]
        assert "matrix products" in r["categories_us_per_step"]
        assert (folder / f"{stem}.txt").stat().st_size < 20_000 and (folder / f"{stem}.json").stat().st_size < 50_000


def test_profile_categories_name_what_the_h200_kernels_do():
    """Names from the committed H200 profile (results/gpu-h200-mistral-7b-decode-profile): cuBLAS's Hopper GEMV
    kernels (nvjet_*) are matrix products, and inductor's kernels go by their kind, not by the ops in their name."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.experiments.device.profile_decode import category
    profile = json.loads((ROOT / "results" / "gpu-h200-mistral-7b-decode-profile" / "decode_profile.json").read_text())
    names = {k["name"] for k in profile["top_kernels"]}
    want = {
        "nvjet_sm90_tst_128x8_64x12_2x1_v_bz_TNT": "matrix products",
        "nvjet_sm90_tst_64x8_64x16_2x1_v_bz_splitK_TNT": "matrix products",
        "triton_poi_fused__unsafe_view_mul_silu_slice_8": "fused elementwise (inductor)",
        "triton_red_fused__to_copy__unsafe_view_add_mean_mul_pow_rsqrt_14": "reductions (split-K, norms, argmax)",
    }
    assert set(want) <= names
    for name, label in want.items():
        assert category(name) == label, name
    bmm = next(n for n in names if n.startswith("triton_poi_fused__scaled_dot_product_cudnn_attention"))
    assert category(bmm) == "fused elementwise (inductor)"
    assert category(next(n for n in names if n.startswith("cudnn_generated_fort_native_sdpa"))) == "attention"
    assert category(next(n for n in names if "splitKreduce_kernel" in n)) == "matrix products"
