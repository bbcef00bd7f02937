"""The fast decoder's compile warm-up across loads of the same shape in one process (issue #19): the first load
compiles, the next only traces the model again and takes its kernels from torch's compile caches, and says so.
Run in a fresh process with an empty inductor cache, so the first load is really cold."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = """
import json
import playground
playground.process_setup()
from playground.manager import ModelManager
from playground.variants import VariantOptions
mm = ModelManager(device="cpu")
out = []
for _ in range(2):
    lm = mm.get("smollm2-135m-instruct", "fp32", options=VariantOptions(fast_decode="on"))
    out.append({"warmup_s": lm.stats.warmup_s, "cache": lm.fast.info.compile_cache,
                "note": [n for n in lm.stats.notes if n.startswith("fast decode:")][0]})
    del lm
    mm.unload_all()
print("RESULT " + json.dumps(out))
"""


def test_a_second_load_of_the_same_shape_reuses_the_compiled_kernels(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
                                   TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = json.loads(proc.stdout.split("RESULT ", 1)[1])
    print(f"warm-up: first load {first['warmup_s']:.1f} s ({first['cache']}), second {second['warmup_s']:.1f} s "
          f"({second['cache']})")
    assert first["cache"] == "miss" and "compiled anew" in first["note"]
    assert second["cache"] == "hit" and "compile cache hit" in second["note"]
    assert second["warmup_s"] < 0.5 * first["warmup_s"]
