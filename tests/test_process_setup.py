"""Importing playground changes nothing in the process; ``process_setup()`` (called first by every entry point)
makes the settings, each one left as the user set it (issue 18: no import-time side effects)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("LRU_CACHE_CAPACITY", "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "PYTORCH_CUDA_ALLOC_CONF",
            "TOKENIZERS_PARALLELISM", "GRADIO_ANALYTICS_ENABLED")

PROBE = r"""
import json, logging, os, sys
before = dict(os.environ)
import playground, playground.launch, playground.cli, playground.ui.app, benchmarks.__main__, benchmarks.worker
after_import = dict(os.environ)
levels = {n: logging.getLogger(n).level for n in ("torchao", "gptqmodel", "accelerate")}
playground.process_setup()
print(json.dumps({"import_changed": sorted(k for k in set(before) | set(after_import)
                                           if before.get(k) != after_import.get(k)),
                  "levels_after_import": levels, "after_setup": {k: os.environ.get(k) for k in sys.argv[1:]},
                  "levels_after_setup": {n: logging.getLogger(n).level for n in levels}}))
"""


def probe(env: dict) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    proc = subprocess.run([sys.executable, "-c", PROBE, *SETTINGS], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**clean, "PYTHONPATH": str(ROOT), **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_packages_leaves_the_environment_and_loggers_alone():
    out = probe({})
    assert out["import_changed"] == [], out
    assert set(out["levels_after_import"].values()) == {0}, out      # NOTSET: as logging left them
    assert out["after_setup"] == {"LRU_CACHE_CAPACITY": "16", "ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16",
                                  "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
                                  "TOKENIZERS_PARALLELISM": "false", "GRADIO_ANALYTICS_ENABLED": "False"}
    assert set(out["levels_after_setup"].values()) == {40}, out      # ERROR


def test_process_setup_keeps_what_the_user_set():
    out = probe({"LRU_CACHE_CAPACITY": "512", "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64"})
    assert out["after_setup"]["LRU_CACHE_CAPACITY"] == "512"
    assert out["after_setup"]["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:64"
    assert out["after_setup"]["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "16"


def test_every_entry_point_calls_process_setup_first():
    """The mains that start a process: the app, the terminal chat, the benchmark CLI, its worker, the experiments."""
    import ast
    mains = ["playground/launch.py", "playground/cli.py", "benchmarks/__main__.py", "benchmarks/worker.py",
             "benchmarks/experiments/kv_quality.py", "benchmarks/experiments/reliability.py",
             "benchmarks/experiments/ui_streaming_cost.py"]
    for rel in mains:
        tree = ast.parse((ROOT / rel).read_text())
        main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
        calls = [s.value.func.id for s in main.body if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)
                 and isinstance(s.value.func, ast.Name)]
        first_statements = [s for s in main.body if not isinstance(s, (ast.Import, ast.ImportFrom))][:1]
        assert calls[:1] == ["process_setup"] and first_statements[0].value.func.id == "process_setup", rel
