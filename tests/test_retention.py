"""An unloaded model is really gone: nothing keeps a reference to it (the CPU half of the GPU memory issue).

On an H200 an unload left 3.9 GB of a GPTQ model allocated: gptqmodel keeps the ImportError of an optional
dependency in a module global, and its traceback held the frames of the model load that first imported gptqmodel
(``playground/retention.py``). A reference leak is device-independent: these tests find it on the CPU by asking
whether the model object is still alive after ``unload`` (a weak reference), not by reading memory counters.
"""
from __future__ import annotations

import gc
import json
import subprocess
import sys
import types
import weakref
from pathlib import Path

import pytest
import torch

from playground.manager import ModelManager
from playground.retention import drop_stored_tracebacks, held_by

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import gc, json, sys, weakref
from benchmarks.random_weights import ensure_random_model
from playground.manager import ModelManager
from playground.variants import VariantOptions
path, _ = ensure_random_model("tiny-llama")
mm = ModelManager(device="cpu", budget_bytes=1 << 40)
out = {}
for variant, kernel in [("gptq", None), ("gptq", "tinygemm"), ("awq", "tinygemm"), ("int8", None)]:
    lm = mm.get(path, variant, options=VariantOptions(kernel=kernel, fast_decode="off"))
    ref = weakref.ref(lm.model)
    del lm
    mm.unload(path, variant)
    gc.collect()
    out[f"{variant}/{kernel}"] = {"alive": ref() is not None, "unreturned": [u.held_by for u in mm.unreturned]}
print(json.dumps(out))
"""


def test_unloaded_gptq_awq_int8_models_are_freed_in_a_fresh_process():
    """A fresh interpreter, so gptqmodel is first imported inside a load, as in the app (the leak needed that)."""
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, r in result.items():
        assert not r["alive"], f"{name}: the model outlived its unload, held by {r['unreturned']}"
        assert r["unreturned"] == [], name


def _load_inside_a_failed_import(module: types.ModuleType, model) -> None:
    """What gptqmodel's gguf_cpp does: an optional import fails and the module keeps the exception."""
    try:
        import playground_no_such_optional_dependency  # noqa: F401
    except ImportError as exc:
        module.IMPORT_ERROR = exc          # its traceback holds this frame, whose locals hold ``model``


def test_an_exception_kept_in_a_module_global_no_longer_holds_the_model():
    module = types.ModuleType("fake_optional_kernel")
    sys.modules[module.__name__] = module
    try:
        model = torch.nn.Linear(64, 64)
        ref = weakref.ref(model)
        _load_inside_a_failed_import(module, model)
        del model
        gc.collect()
        assert ref() is not None, "the stored traceback should hold the model (the bug this guards against)"
        assert "module fake_optional_kernel" in held_by(ref()), held_by(ref())
        assert drop_stored_tracebacks() >= 1
        gc.collect()
        assert ref() is None
        assert "playground_no_such_optional_dependency" in str(module.IMPORT_ERROR), "the message stays"
    finally:
        del sys.modules[module.__name__]


def test_finding_the_holder_scans_the_heap_once_per_level_not_once_per_object():
    """A model with 3,000 referrers held from C (no Python owner): one heap scan per object took 190 s on a
    300k-object heap. The walk asks gc.get_referrers once per level, and still names a module owner through a
    wide level."""
    import ctypes

    from playground import retention
    calls = []

    def count(frame, event, arg):          # a profile hook: sees the C call without wrapping it
        if event == "c_call" and arg is gc.get_referrers and frame.f_code is retention.held_by.__code__:
            calls.append(len(frame.f_locals.get("args", (None,))))

    class Model:
        pass

    def fan_held_from_c():
        m = Model()
        fan = [[m] for _ in range(3000)]
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(fan))   # leaked on purpose: only C holds it
        return weakref.ref(m)
    ref = fan_held_from_c()
    sys.setprofile(count)
    try:
        text = held_by(ref())
    finally:
        sys.setprofile(None)
    assert text.startswith("no Python owner found"), text
    assert len(calls) <= 4 and max(calls) >= 3000, calls         # the fan in one call
    holder = types.ModuleType("some_wide_cache")
    sys.modules[holder.__name__] = holder
    try:
        m = Model()
        holder.CACHE = {"pad": [[m] for _ in range(500)], "deep": {"x": [m]}}
        calls.clear()
        sys.setprofile(count)
        try:
            text = held_by(m)
        finally:
            sys.setprofile(None)
        assert text.startswith("module some_wide_cache"), text
        assert 1 <= len(calls) <= 5, calls
    finally:
        del sys.modules[holder.__name__]


def test_an_unload_whose_model_is_still_held_says_so_in_the_models_tab(tiny_random_model):
    from playground.ui.models_tab import unreturned_lines
    holder = types.ModuleType("some_library_cache")
    sys.modules[holder.__name__] = holder
    try:
        mm = ModelManager(device="cpu", budget_bytes=1 << 40)
        lm = mm.get(tiny_random_model, "fp32")
        holder.CACHE = [lm.model]              # a library keeping the model, as the leaks did
        weights = lm.stats.weights_bytes
        del lm
        assert mm.unload(tiny_random_model, "fp32")
        assert len(mm.unreturned) == 1
        u = mm.unreturned[0]
        assert u.bytes == weights and "module some_library_cache" in u.held_by, u
        ctx = types.SimpleNamespace(manager=mm)
        text = unreturned_lines(ctx)
        assert "memory not returned" in text and "some_library_cache" in text and "[fp32]" in text, text
        holder.CACHE.clear()                   # once released, the warning goes away
        gc.collect()
        assert unreturned_lines(ctx) == ""
    finally:
        del sys.modules[holder.__name__]


def test_a_clean_unload_reports_nothing(tiny_random_model):
    mm = ModelManager(device="cpu", budget_bytes=1 << 40)
    lm = mm.get(tiny_random_model, "bf16")
    ref = weakref.ref(lm.model)
    del lm
    mm.unload(tiny_random_model, "bf16")
    assert ref() is None and mm.unreturned == []


def test_fast_decode_fallback_keeps_no_frame_of_the_failed_compile():
    from playground.fast_decode import FastDecoder

    class Holder:
        pass
    model = torch.nn.Linear(4, 4)
    fast = FastDecoder(model, "cpu", compile=True, backend="eager")
    held = Holder()
    ref = weakref.ref(held)

    def failing_compile(obj):
        raise RuntimeError("cannot compile this kernel")
    try:
        failing_compile(held)
    except RuntimeError as exc:
        del held
        fast._fall_back(exc)
    gc.collect()
    assert ref() is None, "the failed compile's frames (and what they held) must not survive the fallback"
    assert "graph breaks" in fast.info.fallback_reason


def test_tinygemm_repack_frees_each_original_as_it_goes():
    """Layer by layer: the list of originals is emptied, so no original outlives its packed copy."""
    from playground.int4_tinygemm import convert_model

    class Fake4bit(torch.nn.Module):          # the interface repack reads from a gptqmodel QuantLinear
        bits, group_size = 4, 32

        def __init__(self, k, n):
            super().__init__()
            self.in_features, self.out_features = k, n
            codes = torch.randint(0, 16, (k, n)).float() - 8
            self.scales = torch.full((k // 32, n), 0.01)
            self.register_buffer("w", (codes * 0.01).to(torch.bfloat16))
            self.bias = None

        def forward(self, x):
            return x.to(torch.bfloat16) @ self.w

    model = torch.nn.Sequential(Fake4bit(64, 32), Fake4bit(64, 32))
    layers = list(model.named_children())
    refs = [weakref.ref(m) for _, m in layers]
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = model[1](x)
    done, skipped = convert_model(model, layers)
    assert (done, skipped, layers) == (2, [], [])
    assert all(r() is None for r in refs), "an original layer outlived the conversion"
    assert type(model[0]).__name__ == "TinyGemmInt4Linear"
    with torch.no_grad():
        got = model[1](x)
    assert torch.allclose(got.float(), want.float(), atol=0.05), (got - want).abs().max()


@pytest.fixture(scope="module")
def tiny_random_model():
    from benchmarks.random_weights import ensure_random_model
    return ensure_random_model("tiny-llama")[0]


def _alive_quant_layers() -> set[int]:
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear
    gc.collect()
    return {id(o) for o in gc.get_objects() if isinstance(o, BaseQuantLinear)}


@pytest.mark.parametrize("drop", [False, True])
def test_gptqmodel_pool_threads_let_go_of_a_quantized_model(tmp_path, monkeypatch, drop):
    """gptqmodel's pool workers keep their last task's arguments until the next task: after a real GPTQ
    quantization and load, an unloaded model's QuantLinear layers stayed alive (stop 24's leak). With
    ``drop_worker_references`` (run by every quantization and load) none is left; without it the leak is back,
    which shows the test can see it."""
    from benchmarks.random_weights import make_tokenizer
    from playground import gptq_awq
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = json.loads((ROOT / "benchmarks/architectures/tiny-llama.json").read_text())["config"]
    torch.manual_seed(0)
    folder = tmp_path / "tiny-real"
    LlamaForCausalLM(LlamaConfig(**cfg)).to(torch.bfloat16).save_pretrained(folder)
    make_tokenizer(cfg, (ROOT / "playground/data/calibration.txt").read_text()[:20000]).save_pretrained(folder)
    monkeypatch.setenv("PLAYGROUND_CACHE", str(tmp_path / "cache"))
    real_drop = gptq_awq.drop_worker_references
    if not drop:
        monkeypatch.setattr(gptq_awq, "drop_worker_references", lambda *a, **k: 0)
    before = _alive_quant_layers()
    mm = ModelManager(device="cpu")
    lm = mm.get(str(folder), "gptq")
    assert lm.stats.quantize_s > 0 and len(_alive_quant_layers() - before) > 0
    del lm
    mm.unload_all()
    left = _alive_quant_layers() - before
    if drop:
        assert not left, f"{len(left)} gptqmodel layers outlived the unload"
    else:
        assert left, "without the no-op tasks the pool should still hold the layers (the leak this guards against)"
    assert real_drop() > 0
    assert not _alive_quant_layers() - before
