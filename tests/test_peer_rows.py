"""--peer transformers-static (issue #19): a row of transformers' own static-cache generate beside ours, for the
same model, prompt and tokens, timed per token like ours; with a quantized KV cache it is an unsupported row."""
from __future__ import annotations

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
