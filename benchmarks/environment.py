"""What a number was measured on: hardware, software versions, git commit, date and command line.

GPU facts come from NVML (``trackers.Nvml``) and ``torch.version``: nothing here creates a CUDA context in the
caller's process (the UI's), which would take GPU memory from the benchmark's own workers.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "accelerate", "bitsandbytes", "gptqmodel", "optimum", "tokenizers",
            "safetensors", "plotly", "gradio", "psutil")


def package_version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_info() -> dict:
    def git(*args):
        try:
            r = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
            return r.stdout.strip() if r.returncode == 0 else None
        except (OSError, subprocess.SubprocessError):
            return None
    commit = git("rev-parse", "HEAD")
    if os.environ.get("PLAYGROUND_GIT_COMMIT"):
        # a copy of the tree (the GPU machine) whose .git, if any, is not the commit it was copied from
        return {"commit": os.environ["PLAYGROUND_GIT_COMMIT"], "dirty": None, "from": "PLAYGROUND_GIT_COMMIT"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit or "none (no commit yet)", "dirty": bool(status)}


def gpu_info() -> dict:
    from .trackers import Nvml
    info = {"gpu_count": 0, "gpu_names": [], "driver": None, "cuda": None}
    try:
        import torch
        info["cuda"] = torch.version.cuda
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover
        pass
    nvml = Nvml.get()
    if nvml is not None:
        info.update(gpu_count=len(nvml.handles), gpu_names=nvml.names(), driver=nvml.driver())
    return info


def collect_environment(device: str, argv: list[str] | None = None) -> dict:
    import psutil
    env = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(argv if argv is not None else [os.path.basename(sys.executable)] + sys.argv),
        "device": device,
        "hostname": platform.node(),
        "os": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_cores_logical": psutil.cpu_count(logical=True),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "ram_gb": round(psutil.virtual_memory().total / 1024 ** 3, 2),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "versions": {p: package_version(p) for p in PACKAGES},
        "git": git_info(),
        "env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                                                 "PLAYGROUND_CACHE") if k in os.environ},
    }
    env.update(gpu_info())
    return env
