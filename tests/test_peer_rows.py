"""--peer transformers-static (issue #19): a row of transformers' own static-cache generate beside ours, for the
same model, prompt and tokens, timed per token like ours; with a quantized KV cache it is an unsupported row.
Every row with a peer gets ``x_transformers`` (its decode tok/s over the peer's) in the CSV, the JSON and the
report's tables."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_peer_row_is_measured_beside_ours(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "run", "--model", "random:tiny-llama", "--variants",
                           "bf16", "--batch-sizes", "1,2", "--prompt-tokens", "24", "--new-tokens", "6",
                           "--repeats", "1", "--warmup", "1", "--device", "cpu", "--decode-modes", "eager",
                           "--kv-cache", "default,int8", "--peer", "transformers-static", "--no-overhead-check",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", PLAYGROUND_CACHE=str(tmp_path / "cache")))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = json.loads((out / "results.json").read_text())["rows"]
    peer = [r for r in rows if r["decode_mode"] == "transformers-static"]
    ours = [r for r in rows if r["decode_mode"] == "eager"]
    assert len(peer) == 4 and len(ours) == 4                     # (bs 1, 2) x (kv default, int8)
    for r in peer:
        if r["kv_cache"] == "default":
            assert r["status"] == "ok" and "static" in r["timed_with"], r
            assert r["decode_tok_s"] > 0 and r["ttft_ms"] > 0 and r["new_tokens"] == 6
        else:
            assert r["status"] == "unsupported" and "default KV cache" in r["error"]
    assert all(r["status"] == "ok" and r["timed_with"] != peer[0]["timed_with"]
               for r in ours if r["kv_cache"] == "default")

    for r in rows:                       # x transformers: over the peer row of the same batch size, lengths, variant
        mate = next(p for p in peer if p["batch_size"] == r["batch_size"] and p["kv_cache"] == "default")
        if r["status"] != "ok":
            assert r["x_transformers"] is None
        else:
            assert abs(r["x_transformers"] - r["decode_tok_s"] / mate["decode_tok_s"]) < 1e-9, r
    assert all(r["x_transformers"] == 1.0 for r in peer if r["status"] == "ok")
    with open(out / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert "x_transformers" in table[0] and all(t["x_transformers"] != "" for t in table if t["status"] == "ok")
    page = (out / "report.html").read_text()
    assert "× transformers" in page and "x_transformers" in page and "bf16+transformers-static" in page


def test_peer_ratios_match_the_same_variant_and_setting_only():
    from benchmarks.results import add_peer_ratios
    from benchmarks.runner import decode_kind

    def row(variant, mode, tok, bs=1, status="ok", kv="default"):
        return {"model": "m", "variant": variant, "device": "cuda", "batch_size": bs, "prompt_tokens": 512,
                "new_tokens": 256, "decode_mode": mode, "kv_cache": kv, "status": status, "decode_tok_s": tok}
    rows = [row("bf16", "transformers-static", 100.0), row("bf16", "compiled + CUDA graphs", 150.0),
            row("bf16", "eager", 50.0, kv="int8"), row("gptq", "compiled + CUDA graphs", 240.0),
            row("gptq", "transformers-static", None, status="error"), row("bf16", "eager", 400.0, bs=16)]
    add_peer_ratios(rows)
    assert [r["x_transformers"] for r in rows] == [1.0, 1.5, 0.5, None, None, None]
    assert decode_kind("transformers-static") == "transformers-static" and decode_kind(None) == "eager"
    assert decode_kind("compiled + CUDA graphs, fused qkv+gate/up") == "fast"
